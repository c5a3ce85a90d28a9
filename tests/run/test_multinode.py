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
from run_control import assert_same_results, trial_id_of, trial_states, tune_state

from study.run.runner import run_study
from study.spec.presets import get_preset
from study.spec.resolve import finalize_study

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

COLS = ["task", "seed", "regime", "stop_epoch", "test_auc", "test_accuracy", "val_loss"]


@pytest.fixture
def cluster(study_env, monkeypatch, tmp_path):
    """Head (0 CPUs) + 2 worker nodes of 1 CPU; node death is detected within ~2 s instead of ~15 s."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    for k, v in study_env.items():  # nodes are started from this process: they inherit the environment
        monkeypatch.setenv(k, v)
    # Trials pause at fine-tune epoch 2 once a test creates this folder (faults.pause, tests/support).
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
        check_exact=True,
    )


def _wait_for(condition, what: str, timeout: float = 120, poll: float = 0.05):
    """Poll `condition()` until it returns something true (returned), or fail naming `what` after `timeout`."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.time() < deadline, f"waited {timeout} s for {what}"
        time.sleep(poll)


def test_smoke_study_runs_across_nodes_shares_pretexts_and_equals_single_node(cluster, tmp_path, smoke_run):
    smoke = get_preset("smoke")
    default_lr = smoke.base.lr
    # One more rotation arm with another fine-tune lr: it needs the same pretext as the rotation arm.
    # One seed keeps it short (5 trials on two 1-CPU nodes).
    preset = smoke.replace(arms=(*smoke.arms, {"task": "rotation", "lr": default_lr * 3}), seeds=(0,))
    c, _ = cluster
    run_dir = run_study(finalize_study(preset), storage=tmp_path / "shared", name="multi", address=c.address)
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
    last checkpoint, and the study completes with every trial and the single-node results (every column
    of results.csv, exactly, but timings and process and node ids)."""
    c, workers = cluster
    run_dir = tmp_path / "shared" / "lost-node"
    # Seed 0 of the smoke study as it is (4 trials, 3 fine-tune epochs): the single-node run's seed 0 is the
    # reference. The paused trial has fine-tune epoch 3 left after its epoch-2 checkpoint.
    preset = get_preset("smoke").replace(seeds=(0,))
    assert preset.base.finetune_epochs > 2
    removed: dict = {}
    failures: list[BaseException] = []
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()  # turns the pause on (see the cluster fixture)

    def paused_trial() -> dict | None:
        # The first trial to checkpoint fine-tune epoch 2 writes paused.json and waits (faults.pause, tests/support).
        try:
            return json.loads((pause_dir / "paused.json").read_text())
        except (FileNotFoundError, ValueError):  # not there yet, or being written
            return None

    def checkpoint_registered(trial_id: str) -> bool:
        # The driver has the epoch-2 result, and with it the checkpoint, once its saved state (about once a
        # second) has it: the retry then starts from there.
        try:
            last = trial_states(tune_state(run_dir)).get(trial_id, ("", {}))[1]
        except (IndexError, ValueError, OSError):  # no state yet, or being rewritten
            return False
        return (last.get("phase"), last.get("epoch")) == ("finetune", 2)

    def remove_node_under_a_trial() -> None:
        try:
            paused = _wait_for(paused_trial, "a trial to pause at fine-tune epoch 2", timeout=300)
            _wait_for(
                lambda: checkpoint_registered(paused["trial_id"]), "the driver to record its checkpoint"
            )
            node = next(w for w in workers if w.node_id == paused["node_id"])
            c.remove_node(node, allow_graceful=False)
            removed.update(paused)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failures.append(exc)

    killer = threading.Thread(target=remove_node_under_a_trial, daemon=True)
    killer.start()
    study = finalize_study(preset)
    run_study(study, storage=tmp_path / "shared", name="lost-node", address=c.address, write_report=False)
    killer.join(timeout=5)
    assert not failures, failures
    assert removed, "no trial reached fine-tuning while the test watched"

    results = pd.read_csv(run_dir / "results.csv")
    assert len(results) == 4 * 3 and (results["status"] == "ok").all()
    # Tune records the lost attempt of every trial that ran on the removed node.
    interrupted = {
        trial_id_of(d.name) for d in run_dir.glob("two_stage_trial_*") if (d / "error.txt").exists()
    }
    assert interrupted == {removed["trial_id"]}, (removed, interrupted)
    hit = results[results["trial_id"] == removed["trial_id"]]
    assert removed["node_id"] not in set(hit["node_id"])  # it finished on the surviving node
    # It resumed from its epoch-2 checkpoint (restored, 2 epochs kept), and every result equals the
    # single-node run's.
    assert_same_results(
        run_dir, smoke_run, restarts={removed["trial_id"]: {"restored": True, "finetune_epochs_resumed": 2}}
    )
    history = pd.read_csv(run_dir / "history.csv")
    epochs = history[(history["trial_id"] == removed["trial_id"]) & (history["phase"] == "finetune")]
    assert sorted(epochs["epoch"]) == list(range(1, preset.base.finetune_epochs + 1))
