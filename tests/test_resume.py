"""Interrupted studies: a driver killed with SIGKILL, then `study resume` finishes the study (slow, real)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from study.search_spaces import get_preset

pytestmark = pytest.mark.slow

KEY = ["arm", "seed", "regime"]


def _last_result(trial_dir: Path) -> dict:
    """The last complete line of a trial's result.json ({} if none yet; a line being written is skipped)."""
    try:
        lines = (trial_dir / "result.json").read_text().strip().splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def trial_id_of(trial_dir_name: str) -> str:
    """Tune's trial id in a trial folder's name: two_stage_trial_<experiment>_<index>_..."""
    return "_".join(trial_dir_name.split("_")[3:5])


def tune_state(run_dir: Path) -> dict:
    """Ray Tune's experiment state of a run directory (the newest), read as the JSON it is: the trials'
    cloudpickled fields inside it are never decoded."""
    return json.loads(sorted(run_dir.glob("experiment_state-*.json"))[-1].read_text())


def _trial_entries(state: dict):
    """(trial fields, run metadata JSON text) per trial of an experiment state."""
    for trial, meta in state["trial_data"]:
        yield (
            (json.loads(trial) if isinstance(trial, str) else trial),
            (meta if isinstance(meta, str) else json.dumps(meta)),
        )


def trial_states(state: dict) -> dict[str, tuple[str, dict]]:
    """{trial id: (Tune's status, the last result it recorded)} from an experiment state."""
    return {
        trial["trial_id"]: (trial["status"], json.loads(meta).get("last_result") or {})
        for trial, meta in _trial_entries(state)
    }


def latest_checkpoint_results(state: dict) -> dict[str, dict | None]:
    """{trial id: the result Tune's latest registered checkpoint of the trial came with (None: no checkpoint)}
    from an experiment state. The checkpoint manager is a cloudpickled field of the trial's run metadata;
    it is decoded with Tune's own reader (the state is this test's own run's)."""
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    out = {}
    for trial, meta in _trial_entries(state):
        manager = _loads_with_cloudpickle(meta).get("checkpoint_manager")
        latest = manager.latest_checkpoint_result if manager is not None else None
        out[trial["trial_id"]] = dict(latest.metrics) if latest is not None else None
    return out


def _finetune_epochs_in(result: dict) -> int:
    """Fine-tune epochs a result (or the checkpoint that came with it) stands for: 0 before fine-tuning."""
    return {"finetune": result.get("epoch"), "done": result.get("finetune_epochs_run")}.get(
        result.get("phase"), 0
    )


def restart_points(state: dict) -> dict[str, dict]:
    """What `study resume` restarts each unfinished trial from, by the experiment state it restores:
    {trial id: {"restored": ..., "finetune_epochs_resumed": ...}}, the values results.csv must then show.
    Finished (TERMINATED) trials are absent: they do not run again.

    A resumed trial starts from the latest checkpoint Tune registered (read from the state, not inferred
    from the last result: Tune can record a result before the checkpoint that came with it, so a kill
    between the two loses that one checkpoint). A trial checkpoints with its `pretext_done` result and with
    every fine-tune epoch (`checkpoint_every` is 1 in the smoke preset). So: no checkpoint -> the trial
    starts again (`restored` False); `pretext_done` -> restored, no fine-tune epoch kept; fine-tune epoch e
    -> restored, e epochs kept; `done` -> restored from its last fine-tune epoch. Whatever the race, the
    checkpoint is at most `checkpoint_every` fine-tune epochs behind the last result (asserted): a resume
    redoes at most that many, as the README says."""
    every = get_preset("smoke").base.checkpoint_every
    assert every == 1
    checkpoints = latest_checkpoint_results(state)
    out = {}
    for trial_id, (status, last) in trial_states(state).items():
        if status == "TERMINATED":
            continue
        kept = checkpoints[trial_id] or {}
        assert _finetune_epochs_in(last) - _finetune_epochs_in(kept) <= every, (trial_id, last, kept)
        out[trial_id] = {"restored": bool(kept), "finetune_epochs_resumed": _finetune_epochs_in(kept)}
    return out


def cached_pretexts(run_dir: Path) -> set[str]:
    """Keys of the complete entries of the run's pretext cache."""
    cache = run_dir / "pretext_cache"
    return (
        {p.name for p in cache.iterdir() if p.is_dir() and ".tmp-" not in p.name} if cache.is_dir() else set()
    )


def finished_trials(run_dir: Path) -> list[Path]:
    return [d for d in run_dir.glob("two_stage_trial_*") if _last_result(d).get("phase") == "done"]


def last_phases(run_dir: Path) -> dict[str, str]:
    """{trial folder name: `phase` of its last reported result} for the trials that reported anything."""
    phases = {d.name: _last_result(d).get("phase") for d in run_dir.glob("two_stage_trial_*")}
    return {name: phase for name, phase in phases.items() if phase}


def _wait_stopped(pid: int, timeout: float = 5) -> None:
    """Wait until every thread of `pid` is stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue
        if all(state in "tTZX" for state in states):
            return
        time.sleep(0.005)


def session_processes(sid: int) -> list[int]:
    """The live processes of session `sid`: everything a driver started with `start_new_session` runs."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(session) == sid and state not in "ZX":
            pids.append(int(stat.parent.name))
    return pids


def signal_session(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the driver and to every process it started: its process group (driver, GCS, raylet)
    first, so that no new worker starts, then the rest of its session. Ray starts each worker in a process
    group of its own, which `os.killpg` on the driver's group would miss: a worker so spared goes on writing
    into the run directory (a pretext-cache entry, checkpoints) after the "kill", or under the "freeze"."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the group is gone; workers may not be
        pass
    for pid in session_processes(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    if sig == signal.SIGSTOP:
        for pid in session_processes(proc.pid):
            _wait_stopped(pid)
    elif sig == signal.SIGKILL:
        deadline = time.time() + 30
        while session_processes(proc.pid):
            assert time.time() < deadline, f"still alive after SIGKILL: {session_processes(proc.pid)}"
            for pid in session_processes(proc.pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)


def kill_driver_when(
    run_dir: Path, proc: subprocess.Popen, ready, timeout: float = 600, poll: float = 0.1, consistent=None
) -> None:
    """SIGKILL the driver and everything it started (Ray and its workers) once `ready()` holds.

    With `consistent`, they are first frozen (SIGSTOP) and killed only if `ready()` still holds and
    `consistent()` does too (else they continue, SIGCONT, and polling goes on): so the kill never lands while
    the driver is half-way through copying its state into the run directory. Fails with `ready.describe()`
    (what was looked for and what was seen) when the study ends or the timeout passes first."""
    deadline = time.time() + timeout
    while True:
        if ready():
            if consistent is None:
                break
            signal_session(proc, signal.SIGSTOP)
            if ready() and consistent():
                break
            signal_session(proc, signal.SIGCONT)
        what = getattr(ready, "describe", lambda: "")()
        assert proc.poll() is None, f"the study finished before it could be interrupted: {what}"
        assert time.time() < deadline, f"the study never reached the moment to interrupt: {what}"
        time.sleep(poll)
    signal_session(proc, signal.SIGKILL)
    proc.wait(timeout=60)


def run_dir_is_consistent(run_dir: Path) -> bool:
    """No file of the run directory is half-copied by Tune's experiment-state sync (it rewrites the run
    directory's copies, truncating each first, about once a second): the experiment state parses, the
    searcher's state is a complete pickle, and every trial's result.json and progress.csv is empty or ends
    with a complete line."""
    try:
        for f in run_dir.glob("experiment_state-*.json"):
            json.loads(f.read_text())
        for f in run_dir.glob("basic-variant-state-*.json"):  # a pickle despite the name
            assert f.read_bytes().endswith(b".")  # pickle's STOP opcode: written to the end
        for f in run_dir.glob("two_stage_trial_*/result.json"):
            text = f.read_text()
            assert not text or text.endswith("\n")
            [json.loads(line) for line in text.splitlines()]
        for f in run_dir.glob("two_stage_trial_*/progress.csv"):
            text = f.read_text()
            assert not text or text.endswith("\n")
    except (ValueError, AssertionError, OSError):
        return False
    return True


# Tune saves its experiment state (which trials finished, their latest checkpoints) at most once a second
# (runner._init_ray). A trial that finished less than this before the kill may not be recorded as finished yet.
SETTLE_S = 2.5
# Each run gets its own Ray instance: without this, `ray.init()` joins any cluster started with `ray start` on
# the machine (another test session's, say) and the run's fate and timing would be that cluster's.
OWN_RAY = {"RAY_ADDRESS": "local"}


def driver_staging_dir(log: Path) -> Path | None:
    """Tune's driver-side copy of the run directory, from Ray's log line (None until it is printed).

    The driver appends each result to the result.json there as it arrives; the run directory gets a copy of
    those files at each experiment-state sync (about once a second), which can miss a sub-second phase."""
    m = re.search(r"tensorboard --logdir (\S+/driver_artifacts)", log.read_text(errors="replace"))
    return Path(m.group(1)) if m else None


class KillMoment:
    """`ready()` for `kill_driver_when`, as the driver sees the study: `min_done` trials finished, none in the
    last SETTLE_S seconds, and some trial's last reported result has `phase == moment`
    (a pretext or fine-tune epoch was reported and that phase is not over)."""

    def __init__(self, run_dir: Path, log: Path, moment: str, min_done: int):
        self.run_dir, self.log, self.moment, self.min_done = run_dir, log, moment, min_done
        self.staging: Path | None = None
        self.seen: set[tuple[str, str]] = set()  # (trial, phase) pairs observed while polling
        self.phase_polls = self.blocked_polls = 0  # polls at which the phase held; of these, too early
        self.killed_in: list[str] = []  # the trials in the moment's phase at the kill
        self.unsynced = 0  # times the moment held but the run directory was mid-sync or behind

    def view(self) -> Path:
        """Where the driver's result.json files are: its staging folder once known, else the run directory."""
        if self.staging is None:
            self.staging = driver_staging_dir(self.log)
        return self.staging or self.run_dir

    def __call__(self) -> bool:
        last = {d.name: _last_result(d) for d in self.view().glob("two_stage_trial_*")}
        phases = {name: r["phase"] for name, r in last.items() if r.get("phase")}
        self.seen.update(phases.items())
        in_phase = [name for name, phase in phases.items() if phase == self.moment]
        if not in_phase:
            return False
        self.phase_polls += 1
        done = [r for r in last.values() if r.get("phase") == "done"]
        # `timestamp`: when the trial reported its final result (whole seconds).
        settled = len(done) >= self.min_done and all(time.time() - r["timestamp"] >= SETTLE_S for r in done)
        if not settled:
            self.blocked_polls += bool(in_phase)
            return False
        self.killed_in = in_phase
        return True

    def synced(self) -> bool:
        """The run directory holds a complete copy of some state of the driver (see run_dir_is_consistent),
        and every trial the driver saw finish is finished there too (Tune had saved it)."""
        driver_done = {n for n, phase in last_phases(self.view()).items() if phase == "done"}
        ok = run_dir_is_consistent(self.run_dir) and driver_done <= {
            d.name for d in finished_trials(self.run_dir)
        }
        if ok:
            # The trials that Tune's saved state (what `study resume` restores) has in the moment's phase too;
            # mid-fine-tune, with a fine-tune epoch's checkpoint registered (Tune can record the result first).
            state = tune_state(self.run_dir)
            saved, kept = trial_states(state), latest_checkpoint_results(state)
            in_state = [
                n
                for n in self.killed_in
                if saved.get(trial_id_of(n), ("", {}))[1].get("phase") == self.moment
                and (self.moment != "finetune" or (kept.get(trial_id_of(n)) or {}).get("phase") == "finetune")
            ]
            ok, self.killed_in = bool(in_state), in_state or self.killed_in
        self.unsynced += not ok
        return ok

    def describe(self) -> str:
        phases = sorted({phase for _, phase in self.seen})
        return (
            f"waited for {self.moment!r} with >= {self.min_done} trial(s) finished, none in the last "
            f"{SETTLE_S} s (read in {self.staging or self.run_dir}); phases seen while polling: {phases} in "
            f"{len({t for t, _ in self.seen})} trials; {self.moment!r} was seen at {self.phase_polls} poll(s), "
            f"{self.blocked_polls} of them too soon after a trial finished (or before enough had); at "
            f"{self.unsynced} other(s) the run directory (or Tune's saved state) was mid-sync or behind the driver."
        )


# The interrupted studies run seed 0 of the smoke study only (its 4 arms: 4 trials, half the reference run),
# and are compared with the reference run's seed-0 rows: the suite pays for 4 trials per interruption, not 8.
ONE_SEED = ("--set", "seeds=[0]")
N_TRIALS = 4


def start_smoke_study(storage: Path, name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`study run --preset smoke` (seed 0) as a user would start it, in its own process group (so it can be
    killed)."""
    exe = Path(sys.executable).with_name("study")
    argv = [str(exe), "run", "--preset", "smoke", *ONE_SEED, "--storage", str(storage), "--name", name]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*argv, "--no-report"],
            env={**os.environ, **env, **OWN_RAY},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# Columns of results.csv that differ between any two runs of one study, however they ran: left out of the
# comparison with the uninterrupted run (every other column must be equal, exactly).
VARYING = {
    "trial_id": "Tune's trial ids: a random prefix per experiment, and the trial's index in its grid",
    "trial_seconds": "wall time of the trial",
    "probe_s": "wall time of the linear probe",
    "pretext_biharmonic_seconds": "wall time of the classical inpainter (a learning-free reference)",
    "pretext_seconds": "wall time of the pretext phase (its cost; the other cost columns are compared)",
    "pid": "the worker process that ran the trial",
    "node_id": "the Ray node: every driver starts its own Ray",
}


def assert_same_results(
    run_dir: Path,
    reference_dir: Path,
    skip_arms: tuple[str, ...] = (),
    restarts: dict[str, dict] | None = None,
    cached: set[str] = frozenset(),
) -> pd.DataFrame:
    """results.csv of `run_dir` equals the uninterrupted reference run's on every arm x seed x regime of the
    seeds it ran (but `skip_arms`), in every column but VARYING, exactly: training is deterministic and
    bitwise reproducible (1 thread per trial), so no tolerance (pandas' default is 1e-5 relative).

    What the interruption changed is part of the comparison: `restarts` ({trial id: column values}, from
    restart_points) gives `restored` and `finetune_epochs_resumed` of the trials restarted after it; every
    other trial ran once, as in the reference (not restored, nothing resumed). A trial restarted without a
    checkpoint runs its pretext phase again, unless the run's pretext cache held that pretext already
    (`cached`: its keys at the interruption, as the kill can fall between storing a pretext and reporting
    it): then it loads it (`pretext_cached` True, no pretext epoch run), with the same metrics."""
    results = pd.read_csv(run_dir / "results.csv")
    results = results[~results["arm"].isin(skip_arms)]
    reference = pd.read_csv(reference_dir / "results.csv")
    assert not reference["restored"].any() and (reference["finetune_epochs_resumed"] == 0).all()
    assert set(VARYING) <= set(reference.columns)
    reference = reference[reference["seed"].isin(results["seed"]) & ~reference["arm"].isin(skip_arms)]
    assert len(results) == len(reference) and (results["status"] == "ok").all(), results[KEY + ["status"]]
    # The same columns, but those only a skipped arm's trials have (an errored trial reports no pretext
    # metrics): empty in the compared rows of the reference.
    assert set(results.columns) <= set(reference.columns)
    absent = [c for c in reference.columns if c not in results.columns]
    assert reference[absent].isna().all().all(), reference[absent].dropna(axis=1, how="all").columns
    run = results.sort_values(KEY).reset_index(drop=True)
    expected = reference.sort_values(KEY).reset_index(drop=True)
    restarts = restarts or {}
    assert set(restarts) <= set(run["trial_id"]), (restarts, set(run["trial_id"]))
    for i, trial_id in enumerate(run["trial_id"]):
        for col, value in restarts.get(trial_id, {}).items():
            expected.at[i, col] = value
        if (
            trial_id in restarts
            and not restarts[trial_id]["restored"]
            and expected.at[i, "pretext_key"] in cached
        ):
            expected.at[i, "pretext_cached"] = True
            expected.at[i, "pretext_epochs_run"] = 0
    compared = [c for c in results.columns if c not in VARYING]
    # Values exactly; not dtypes, which follow the skipped rows (their NaNs make an int column float).
    pd.testing.assert_frame_equal(run[compared], expected[compared], check_exact=True, check_dtype=False)
    return results


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
    # Epochs slowed down (trainables._maybe_delay): a smoke epoch takes a few hundredths of a second, too short
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
        assert _last_result(run_dir / name)["phase"] == "done", name
    assert_same_results(run_dir, smoke_run, restarts=restarts, cached=cached)
    assert (run_dir / "report.html").exists() == report
    if old_place is not None:  # the restarted pretext was cached under the run's new place
        assert not old_place.exists()
        assert {p.name for p in (run_dir / "pretext_cache").iterdir() if p.is_dir()} >= set(
            _last_result(run_dir / name)["pretext_key"] for name in ready.killed_in
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
