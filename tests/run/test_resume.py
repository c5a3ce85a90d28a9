"""Interrupted studies: a driver killed with SIGKILL, then `study resume` finishes the study (slow, real)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli
from run_control import (
    KEY,
    N_TRIALS,
    ONE_SEED,
    OWN_RAY,
    SETTLE_S,
    KillMoment,
    assert_same_results,
    cached_pretexts,
    finished_trials,
    kill_driver_when,
    last_phases,
    last_result,
    restart_points,
    session_processes,
    signal_session,
    start_smoke_study,
    trial_id_of,
    trial_states,
    tune_state,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "moment, min_done",
    # (An interruption between trials is the Ctrl-C test's.)
    [("pretext", 1), ("finetune", 1)],
    ids=["during-pretext", "during-finetune"],
)
def test_driver_killed_resumes_without_rerunning_finished_trials(
    moment, min_done, tmp_path, study_env, smoke_run
):
    """SIGKILL of the driver and all it started (Ray, workers) while a trial is in its pretext phase (a
    pretext epoch reported, the phase not finished), or in its fine-tune phase; then `study resume`
    completes the study, finished trials are not run again, the interrupted ones restart from their
    checkpoints (a fine-tune one continues after its last saved epoch; a pretext one has none yet), and
    the results equal those of the uninterrupted run."""
    storage, run_dir = tmp_path / "runs", tmp_path / "runs" / "killed"
    log = tmp_path / "run.log"
    # Epochs slowed down (faults.delay, tests/support): a smoke epoch takes a few hundredths of a second, too short
    # for the poller to find a trial in its pretext phase SETTLE_S after another finished, and for Tune to have
    # registered a fine-tune epoch's checkpoint when it saves the result that came with it.
    slowed = {**study_env, "STUDY_TEST_EPOCH_DELAY": f"pretext:{2 * SETTLE_S},finetune:0.5"}
    proc = start_smoke_study(storage, "killed", slowed, log)
    ready = KillMoment(run_dir, log, moment, min_done)
    try:
        kill_driver_when(run_dir, proc, ready, poll=0.05, consistent=lambda: ready.synced())
    except AssertionError as e:
        raise AssertionError(f"{e}\nlog tail:\n{log.read_text(errors='replace')[-2000:]}") from None
    finally:
        if session_processes(proc.pid):
            signal_session(proc, signal.SIGKILL)
    if ready.staging is not None:  # the driver's record at its death: the kill hit the moment
        at_kill = last_phases(ready.staging)
        for name in ready.killed_in:
            assert at_kill[name] == moment, f"{name} had gone on to {at_kill[name]!r} before the kill"
        driver_done = {name for name, phase in at_kill.items() if phase == "done"}
    done_before = {d.name: (d / "result.json").stat().st_mtime_ns for d in finished_trials(run_dir)}
    assert min_done <= len(done_before) < N_TRIALS
    if ready.staging is not None:  # every trial the driver saw finish had reached the run directory
        assert set(done_before) >= driver_done
    assert not set(ready.killed_in) & set(done_before)
    assert not (run_dir / "results.csv").exists()
    # What the resume restarts from: Tune's saved state (finished trials are absent), and the pretext cache.
    state, cached = tune_state(run_dir), cached_pretexts(run_dir)
    finished = {t for t, (status, _) in trial_states(state).items() if status == "TERMINATED"}
    assert finished == {trial_id_of(name) for name in done_before}
    restarts = restart_points(state)
    killed = {trial_id_of(name): restarts[trial_id_of(name)] for name in ready.killed_in}
    if moment == "finetune":  # each had a fine-tune checkpoint: the resume continues it from there
        assert all(k["restored"] and k["finetune_epochs_resumed"] >= 1 for k in killed.values()), killed
    else:  # mid-pretext there is no checkpoint yet: that trial starts again
        assert not any(k["restored"] for k in killed.values()), killed

    old_place = None
    if moment == "pretext":  # a moved run directory resumes in its new place and writes nothing in the old
        old_place, run_dir = run_dir, tmp_path / "moved" / "killed"
        run_dir.parent.mkdir()
        shutil.move(old_place, run_dir)

    # One variant also writes the report of the resumed run (the others skip its ~10 s).
    report = moment == "finetune"
    resumed = run_cli(
        "resume", str(run_dir), *(() if report else ("--no-report",)), env={**study_env, **OWN_RAY}
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    # Trials that had finished were not run again: their result files are untouched.
    for name, mtime in done_before.items():
        assert (run_dir / name / "result.json").stat().st_mtime_ns == mtime, name
    # The trials interrupted mid-phase were run to the end, from their checkpoints where they had one (the
    # `restored` and `finetune_epochs_resumed` columns, compared with `restarts` below).
    for name in ready.killed_in:
        assert last_result(run_dir / name)["phase"] == "done", name
    assert_same_results(run_dir, smoke_run, restarts=restarts, cached=cached)
    assert (run_dir / "report.html").exists() == report
    if old_place is not None:  # the restarted pretext was cached under the run's new place
        assert not old_place.exists()
        assert {p.name for p in (run_dir / "pretext_cache").iterdir() if p.is_dir()} >= set(
            last_result(run_dir / name)["pretext_key"] for name in ready.killed_in
        )


def test_resume_after_a_kill_that_cut_the_experiment_state_fails_loudly_or_recovers(
    tmp_path, study_env, smoke_run
):
    """What a SIGKILL during Tune's state sync leaves (seen in test_driver_killed_...): the run directory's
    experiment state truncated to 0 bytes. Resuming puts back the backup the runner keeps and completes the
    study with its own results; it never restarts a different study."""
    run_dir = tmp_path / "cut"
    shutil.copytree(smoke_run, run_dir)
    (run_dir / "results.csv").unlink()
    states = list(run_dir.glob("experiment_state-*.json"))
    assert states
    for f in states:
        f.write_bytes(b"")
    # The backup is what the resume restores: the trials it has finished do not run again.
    backup = tune_state(run_dir / ".state-backup")
    restarts = restart_points(backup)
    proc = run_cli("resume", str(run_dir), env={**study_env, **OWN_RAY}, timeout=600)
    # The backup may predate a trial's last checkpoint: Tune then logs (and survives) an error while it
    # registers that checkpoint again. What matters: Tune restored the study instead of starting a new one.
    assert "Failed to restore" not in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "from its backup" in proc.stdout  # the last intact copy (.state-backup) was put back
    assert_same_results(run_dir, smoke_run, restarts=restarts, cached=cached_pretexts(smoke_run))
    # The trials the backup has finished were not run again: their rows are the reference's, to the process
    # and the second.
    results, reference = (
        pd.read_csv(d / "results.csv").set_index(KEY).sort_index() for d in (run_dir, smoke_run)
    )
    kept = ~results["trial_id"].isin(list(restarts))
    assert kept.any()
    pd.testing.assert_frame_equal(results[kept], reference[kept], check_exact=True)
    # Without a backup it stops with one line instead (tests/test_state_backup.py).


def test_resume_rejects_a_folder_that_is_not_a_run(tmp_path, study_env):
    proc = run_cli("resume", str(tmp_path), env=study_env, timeout=120)
    assert proc.returncode == 2
    assert "not a study run directory" in proc.stderr and "Traceback" not in proc.stderr


def test_failed_trials_are_retried_from_their_last_checkpoint_and_one_that_keeps_failing_is_recorded(
    tmp_path, study_env, smoke_run
):
    """Every trial fails once right after fine-tune epoch 2 (its checkpoint is saved), and the rotation trial
    fails in its pretext phase on every attempt. Tune's FailureConfig retries the others from that checkpoint:
    epochs 1-2 are not trained again and their results equal the clean run. The rotation trial ends as an
    error with its message (after the retries), the study completes, and the report lists and excludes it."""
    env = {**study_env, "STUDY_INJECT_FAULT": "finetune:2,pretext:1:rotation:always"}
    proc = run_cli(
        "run", "--preset", "smoke", *ONE_SEED, "--storage", str(tmp_path), "--name", "faulty", env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "faulty"
    assert len(list(run_dir.glob("*/.fault-injected"))) == N_TRIALS
    results = pd.read_csv(run_dir / "results.csv")
    failed = results[results["arm"] == "rotation"]
    assert (failed["status"] == "error").all() and failed["error"].str.contains("injected fault").all()
    # Every other trial was retried from its fine-tune epoch-2 checkpoint, and the results say so.
    retried_ids = results.loc[results["arm"] != "rotation", "trial_id"]
    restarts = {t: {"restored": True, "finetune_epochs_resumed": 2} for t in retried_ids}
    retried = assert_same_results(run_dir, smoke_run, skip_arms=("rotation",), restarts=restarts)
    assert retried["restored"].all()  # the retry is visible in the results
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {(e["arm"], e["seed"]) for e in manifest["errors"]} == {("rotation", 0)}
    report = (run_dir / "report.md").read_text()
    assert "injected fault" in report and "Rotation prediction" in report
    # The retried attempts resumed after epoch 2: epoch 1 was reported once, by the failed attempt only.
    retried_dirs = [d for d in run_dir.glob("two_stage_trial_*") if "rotation" not in d.name]
    assert len(retried_dirs) == N_TRIALS - 1
    for trial_dir in retried_dirs:
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        finetune_epochs = [r["epoch"] for r in rows if r.get("phase") == "finetune"]
        assert finetune_epochs.count(1) == 1, finetune_epochs
        done = [r for r in rows if r.get("phase") == "done"][-1]
        assert done["restored"] and done["finetune_epochs_resumed"] == 2
    history = pd.read_csv(run_dir / "history.csv")
    assert not history.duplicated(["trial_id", "phase", "epoch"]).any()


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, study_env, smoke_run):
    """SIGINT to the terminal's process group (what Ctrl-C does) mid-study: exit 130, no traceback, no
    half-filled results table, the resume command printed; `study resume` then completes the study."""
    storage, run_dir = tmp_path / "runs", tmp_path / "runs" / "ctrlc"
    exe = Path(sys.executable).with_name("study")
    proc = subprocess.Popen(
        [
            str(exe),
            "run",
            "--preset",
            "smoke",
            *ONE_SEED,
            "--storage",
            str(storage),
            "--name",
            "ctrlc",
            "--no-report",
        ],
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
    restarts, cached = restart_points(tune_state(run_dir)), cached_pretexts(run_dir)
    assert restarts  # the interrupted trials, with what each restarts from

    resumed = run_cli("resume", str(run_dir), "--no-report", env=study_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_results(run_dir, smoke_run, restarts=restarts, cached=cached)
