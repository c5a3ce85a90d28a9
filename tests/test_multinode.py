"""Multi-node behaviour on one machine: `ray.cluster_utils.Cluster` with a head and two 1-CPU worker nodes.

The head takes no trials (as in cluster.yaml), so every trial runs on a worker node; storage is a folder all
nodes see (what an NFS path is on a real cluster). Run alone with `pytest -m multinode`.
"""

from __future__ import annotations

import json
import threading
import time

import pandas as pd
import pytest

from study.runner import run_study
from study.search_spaces import get_preset

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

COLS = ["task", "seed", "regime", "stop_epoch", "test_auc", "test_accuracy", "val_loss"]


@pytest.fixture
def cluster(study_env, monkeypatch, tmp_path):
    """Head (0 CPUs) + 2 worker nodes of 1 CPU; node death is detected within ~2 s instead of ~15 s."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    for k, v in study_env.items():  # nodes are started from this process: they inherit the environment
        monkeypatch.setenv(k, v)
    # Trials pause at fine-tune epoch 2 once a test creates this folder (trainables._maybe_pause).
    monkeypatch.setenv("STUDY_TEST_PAUSE", f"finetune:2:{tmp_path / 'pause'}")
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def _same_results(results: pd.DataFrame, reference: pd.DataFrame) -> None:
    key = COLS[:3]
    pd.testing.assert_frame_equal(
        results[COLS].sort_values(key).reset_index(drop=True),
        reference[COLS].sort_values(key).reset_index(drop=True),
    )


def test_smoke_study_runs_across_nodes_shares_pretexts_and_equals_single_node(cluster, tmp_path, smoke_run):
    smoke = get_preset("smoke")
    default_lr = smoke.base.lr
    # One more rotation arm with another fine-tune lr: it needs the same pretext as the rotation arm.
    # One seed keeps it short (5 trials on two 1-CPU nodes).
    preset = smoke.replace(arms=(*smoke.arms, {"task": "rotation", "lr": default_lr * 3}), seeds=(0,))
    c, _ = cluster
    run_dir = run_study(preset, storage=tmp_path / "shared", name="multi", address=c.address)
    results = pd.read_csv(run_dir / "results.csv")
    assert (results["status"] == "ok").all(), results[["arm", "seed", "status", "error"]]
    # Trials ran on both worker nodes, never on the head.
    head = c.head_node.node_id
    assert results["node_id"].nunique() == 2 and head not in set(results["node_id"])
    # Each rotation pretext was trained once per seed through the shared storage; the other arm loaded it.
    rot = results[(results["task"] == "rotation") & (results["regime"] == "none")]
    assert len(rot) == 2 and rot["pretext_cached"].sum() == 1
    assert len([p for p in (run_dir / "pretext_cache").iterdir() if p.is_dir()]) == 3
    # Same seed, same results as the single-node run.
    reference = pd.read_csv(smoke_run / "results.csv")
    _same_results(results[results["lr"] == default_lr], reference[reference["seed"] == 0])


def test_a_worker_node_removed_mid_trial_is_rescheduled_from_its_checkpoint(cluster, tmp_path, smoke_run):
    """Kill the node under a fine-tuning trial: Tune retries it (FailureConfig) on the surviving node from its
    last checkpoint, and the study completes with every trial and the single-node results."""
    c, workers = cluster
    run_dir = tmp_path / "shared" / "lost-node"
    smoke = get_preset("smoke")
    # One seed (4 trials); 4 fine-tune epochs, so the paused trial has epochs left after its checkpoint.
    preset = smoke.replace(seeds=(0,), base=smoke.base.replace(finetune_epochs=4))
    removed: dict = {}
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()  # turns the pause on (see the cluster fixture)

    def remove_node_under_a_trial() -> None:
        # The first trial to checkpoint fine-tune epoch 2 writes paused.json and waits (trainables._maybe_pause).
        marker = pause_dir / "paused.json"
        deadline = time.time() + 300
        while time.time() < deadline and not removed:
            if marker.exists() and marker.stat().st_size:
                time.sleep(1.0)  # let the write finish and the driver register the epoch-2 checkpoint
                paused = json.loads(marker.read_text())
                node = next(w for w in workers if w.node_id == paused["node_id"])
                c.remove_node(node, allow_graceful=False)
                removed.update(paused)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=remove_node_under_a_trial, daemon=True)
    killer.start()
    run_study(preset, storage=tmp_path / "shared", name="lost-node", address=c.address, write_report=False)
    killer.join(timeout=5)
    assert removed, "no trial reached fine-tuning while the test watched"

    results = pd.read_csv(run_dir / "results.csv")
    assert len(results) == 4 * 3 and (results["status"] == "ok").all()
    # Tune records the lost attempt of every trial that ran on the removed node.
    interrupted = {
        "_".join(d.name.split("_")[3:5])
        for d in run_dir.glob("two_stage_trial_*")
        if (d / "error.txt").exists()
    }
    assert removed["trial_id"] in interrupted, (removed, interrupted)
    hit = results[results["trial_id"] == removed["trial_id"]]
    assert hit["restored"].all(), "the interrupted trial was not restarted from a checkpoint"
    assert removed["node_id"] not in set(hit["node_id"])  # it finished on the surviving node
    # It resumed from its last checkpoint (saved every epoch): at most the epoch in progress was redone.
    assert (hit["finetune_epochs_resumed"] >= removed["epoch"]).all()
    assert (hit["finetune_epochs_run"] == preset.base.finetune_epochs).all()
    history = pd.read_csv(run_dir / "history.csv")
    epochs = history[(history["trial_id"] == removed["trial_id"]) & (history["phase"] == "finetune")]
    assert sorted(epochs["epoch"]) == list(range(1, preset.base.finetune_epochs + 1))
