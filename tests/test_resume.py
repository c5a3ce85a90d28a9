"""Interrupted studies: a driver killed with SIGKILL, then `study resume` finishes the study (slow, real)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow

KEY = ["arm", "seed", "regime"]
METRICS = ["stop_epoch", "test_auc", "test_soft_accuracy", "test_accuracy", "val_loss"]


def _last_result(trial_dir: Path) -> dict:
    lines = (
        (trial_dir / "result.json").read_text().strip().splitlines()
        if (trial_dir / "result.json").exists()
        else []
    )
    return json.loads(lines[-1]) if lines else {}


def finished_trials(run_dir: Path) -> list[Path]:
    return [d for d in run_dir.glob("two_stage_trial_*") if _last_result(d).get("phase") == "done"]


def kill_driver_when(run_dir: Path, proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL the driver's whole process group (driver, Ray and its workers) once `ready()` holds."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the study finished before it could be interrupted"
        assert time.time() < deadline, "the study never reached the moment to interrupt"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_driver_killed_between_trials_resumes_without_rerunning_finished_trials(
    tmp_path, study_env, smoke_run
):
    storage, run_dir = tmp_path / "runs", tmp_path / "runs" / "killed"
    exe = Path(sys.executable).with_name("study")
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(
        [str(exe), "run", "--preset", "smoke", "--storage", str(storage), "--name", "killed", "--no-report"],
        env={**os.environ, **study_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def two_trials_done() -> bool:
        if len(finished_trials(run_dir)) < 2:
            return False
        time.sleep(2.5)  # let Tune save its experiment state (every second, see runner._init_ray)
        return True

    kill_driver_when(run_dir, proc, two_trials_done)
    done_before = {d.name: (d / "result.json").stat().st_mtime_ns for d in finished_trials(run_dir)}
    assert 2 <= len(done_before) < 8
    assert not (run_dir / "results.csv").exists()

    resumed = run_cli("resume", str(run_dir), env=study_env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    # Trials that had finished were not run again: their result files are untouched.
    for name, mtime in done_before.items():
        assert (run_dir / name / "result.json").stat().st_mtime_ns == mtime, name
    results = pd.read_csv(run_dir / "results.csv")
    reference = pd.read_csv(smoke_run / "results.csv")
    assert len(results) == len(reference) and (results["status"] == "ok").all()
    # Same seeds, same results as the uninterrupted run (deterministic training, 1 thread per trial).
    merged = reference.merge(results, on=KEY, suffixes=("_ref", "_resumed"))
    assert len(merged) == len(reference)
    for m in METRICS:
        np.testing.assert_array_equal(merged[f"{m}_ref"], merged[f"{m}_resumed"], err_msg=m)
    assert (run_dir / "report.html").exists()


def test_resume_rejects_a_folder_that_is_not_a_run(tmp_path, study_env):
    proc = run_cli("resume", str(tmp_path), env=study_env, timeout=120)
    assert proc.returncode == 2
    assert "not a study run directory" in proc.stderr and "Traceback" not in proc.stderr


def test_failed_trials_are_retried_from_their_last_checkpoint(tmp_path, study_env, smoke_run):
    """Every trial fails once right after fine-tune epoch 2 (its checkpoint is saved); Tune's FailureConfig
    retries it from that checkpoint: epochs 1-2 are not trained again and the results equal the clean run."""
    env = {**study_env, "STUDY_INJECT_FAULT": "finetune:2"}
    proc = run_cli(
        "run", "--preset", "smoke", "--storage", str(tmp_path), "--name", "faulty", "--no-report", env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "faulty"
    assert len(list(run_dir.glob("*/.fault-injected"))) == 8
    results = pd.read_csv(run_dir / "results.csv")
    assert (results["status"] == "ok").all()
    assert results["restored"].all()  # the retry is visible in the results
    reference = pd.read_csv(smoke_run / "results.csv")
    merged = reference.merge(results, on=KEY, suffixes=("_ref", "_retried"))
    assert len(merged) == len(reference)
    for m in METRICS:
        np.testing.assert_array_equal(merged[f"{m}_ref"], merged[f"{m}_retried"], err_msg=m)
    # The retried attempt resumed after epoch 2: epoch 1 was reported once, by the failed attempt only.
    for trial_dir in run_dir.glob("two_stage_trial_*"):
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        finetune_epochs = [r["epoch"] for r in rows if r.get("phase") == "finetune"]
        assert finetune_epochs.count(1) == 1, finetune_epochs
        done = [r for r in rows if r.get("phase") == "done"][-1]
        assert done["restored"] and done["finetune_epochs_resumed"] == 2
    history = pd.read_csv(run_dir / "history.csv")
    assert not history.duplicated(["trial_id", "phase", "epoch"]).any()


def test_a_trial_that_keeps_failing_is_recorded_and_the_study_completes(tmp_path, study_env):
    """Rotation trials fail on every attempt: they end as errors with their message (after the retries of
    FailureConfig), every other trial finishes, and the report lists the failures and excludes them."""
    env = {**study_env, "STUDY_INJECT_FAULT": "pretext:1:rotation:always"}
    proc = run_cli("run", "--preset", "smoke", "--storage", str(tmp_path), "--name", "broken", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "broken"
    results = pd.read_csv(run_dir / "results.csv")
    failed = results[results["arm"] == "rotation"]
    assert (failed["status"] == "error").all() and failed["error"].str.contains("injected fault").all()
    assert (results[results["arm"] != "rotation"]["status"] == "ok").all()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {(e["arm"], e["seed"]) for e in manifest["errors"]} == {("rotation", 0), ("rotation", 1)}
    report = (run_dir / "report.md").read_text()
    assert "injected fault" in report and "Rotation prediction" in report


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, study_env, smoke_run):
    """SIGINT to the terminal's process group (what Ctrl-C does) mid-study: exit 130, no traceback, no
    half-filled results table, the resume command printed; `study resume` then completes the study."""
    storage, run_dir = tmp_path / "runs", tmp_path / "runs" / "ctrlc"
    exe = Path(sys.executable).with_name("study")
    proc = subprocess.Popen(
        [str(exe), "run", "--preset", "smoke", "--storage", str(storage), "--name", "ctrlc", "--no-report"],
        env={**os.environ, **study_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while len(finished_trials(run_dir)) < 1:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert f"study resume {run_dir}" in err and "Traceback" not in err
    assert not (run_dir / "results.csv").exists()

    resumed = run_cli("resume", str(run_dir), env=study_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = pd.read_csv(run_dir / "results.csv")
    reference = pd.read_csv(smoke_run / "results.csv")
    merged = reference.merge(results, on=KEY, suffixes=("_ref", "_resumed"))
    assert len(merged) == len(reference) and (results["status"] == "ok").all()
    np.testing.assert_array_equal(merged["test_auc_ref"], merged["test_auc_resumed"])
