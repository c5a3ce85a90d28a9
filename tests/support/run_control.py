"""Driving and reading an interrupted study: start, kill and inspect a smoke run's driver and Tune state (shared by the resume, node-loss and S3 tests)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from study.spec.presets import get_preset

KEY = ["arm", "seed", "regime"]


def last_result(trial_dir: Path) -> dict:
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
    return [d for d in run_dir.glob("two_stage_trial_*") if last_result(d).get("phase") == "done"]


def last_phases(run_dir: Path) -> dict[str, str]:
    """{trial folder name: `phase` of its last reported result} for the trials that reported anything."""
    phases = {d.name: last_result(d).get("phase") for d in run_dir.glob("two_stage_trial_*")}
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
# (runner.init_ray). A trial that finished less than this before the kill may not be recorded as finished yet.
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
        last = {d.name: last_result(d) for d in self.view().glob("two_stage_trial_*")}
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
