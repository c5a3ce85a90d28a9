"""`study extend RUN --seeds N` (issue #29): more seeds for a finished study as one more look. Only the new
trials run; the finished ones, their rows in results.csv and their pretext-cache entries are untouched; the
report covers every seed and lists the looks; a kill during the extension is finished by `study resume`; bad
requests are refused in one line before anything is written."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli
from run_control import OWN_RAY, kill_driver_when, last_result, signal_session

from study import cli
from study.run import runner


def _copy(smoke_run: Path, tmp_path: Path, name: str = "extended") -> Path:
    copy = tmp_path / "runs" / name
    shutil.copytree(smoke_run, copy, symlinks=True)
    return copy


def _snapshot(run: Path) -> dict[str, int]:
    """mtime of every file of the finished trials and of the pretext cache (what an extension must not touch)."""
    files = [*run.glob("two_stage_trial_*/**/*"), *run.glob("pretext_cache/**/*")]
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in files if p.is_file()}


def _start_extend(run: Path, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("study"))
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [exe, "extend", str(run), *args],
            env={**os.environ, **env, **OWN_RAY},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow
def test_extend_runs_only_the_new_seeds_resumes_after_a_kill_and_reports_two_looks(
    smoke_run, tmp_path, study_env
):
    """The issue's acceptance run: the smoke study (2 seeds) extended to 4, killed (SIGKILL of the driver and
    all it started) once some of the new trials finished, then finished by `study resume`."""
    run = _copy(smoke_run, tmp_path)
    before_rows = (run / "results.csv").read_bytes()
    before_history = (run / "history.csv").read_bytes()
    before = _snapshot(run)
    old_trials = set(run.glob("two_stage_trial_*"))
    log = tmp_path / "extend.log"
    proc = _start_extend(run, {**study_env, "STUDY_TEST_EPOCH_DELAY": "finetune:0.5"}, log, "--seeds", "4")

    def some_new_trials_done() -> bool:
        new = [d for d in set(run.glob("two_stage_trial_*")) - old_trials]
        done = [d for d in new if last_result(d).get("phase") == "done"]
        return len(new) == 8 and 0 < len(done) < 8

    try:
        kill_driver_when(run, proc, some_new_trials_done, poll=0.1)
    finally:
        signal_session(proc, signal.SIGKILL)
    assert "Look 2: seeds 2-3 for 4 arms (8 trials)" in log.read_text()
    assert (run / "results.csv").read_bytes() == before_rows  # nothing appended by the killed look
    resumed = run_cli("resume", str(run), env={**study_env, **OWN_RAY})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The first seeds' rows and files are as they were, byte for byte; only new seeds' trials ran.
    assert (run / "results.csv").read_bytes().startswith(before_rows)
    assert (run / "history.csv").read_bytes().startswith(before_history)
    assert {k: v for k, v in _snapshot(run).items() if k in before} == before
    new_trials = set(run.glob("two_stage_trial_*")) - old_trials
    assert len(new_trials) == 8 and all("seed=2" in p.name or "seed=3" in p.name for p in new_trials)
    results = pd.read_csv(run / "results.csv")
    assert len(results) == len(results.drop_duplicates(["arm", "seed", "regime"]))
    seeds = {arm: sorted(set(s)) for arm, s in results.groupby("arm")["seed"]}
    assert seeds == dict.fromkeys(["baseline", "corruption", "missing_patch", "rotation"], [0, 1, 2, 3])
    # The manifest and the report list both looks; the verdict table's design line says so.
    looks = json.loads((run / "manifest.json").read_text())["looks"]
    assert [(x["look"], x["seeds"], x["added"], x["planned"]) for x in looks] == [
        (1, 2, [0, 1], False),
        (2, 4, [2, 3], False),
    ]
    report = (run / "report.md").read_text()
    assert "in 2 look(s) at 2, 4 seeds (unplanned, corrected)" in report
    assert "| Look | Seeds | Arms run | Decided here |" in report and "\n| 2 | 4 | 4 |" in report
    comparisons = pd.read_csv(run / "comparisons.csv")
    assert "look" in comparisons and comparisons.loc[comparisons["primary"], "n"].eq(4).all()
    # Both experiments' files stay signed (the new look's upload keeps the first one's signatures).
    from study.run import integrity

    assert integrity.unsigned_files(run, integrity.load_key()) == []
    # The rows appended match the trials' own records: `study report` finds no edit.
    again = run_cli("report", str(run), env=study_env)
    assert again.returncode == 0 and "differ from the trials' own records" not in again.stderr, again.stderr


# ---------------------------------------------------------------------------------------------- bad requests
@pytest.fixture
def extend_error(smoke_run, tmp_path, capsys, monkeypatch):
    """`extend_error(*args, run=...)`: `study extend` in-process on a copy of the smoke run: exit 2, one line,
    no traceback, Ray never started, and the run's files unchanged."""

    def no_ray(*a, **kw):
        raise AssertionError("Ray was started: the request was not refused first")

    monkeypatch.setattr(runner, "init_ray", no_ray)
    run = _copy(smoke_run, tmp_path)

    def call(*args: str) -> str:
        files = {p: p.read_bytes() for p in run.iterdir() if p.is_file()}
        code = cli.main(["extend", str(run), *args])
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        lines = [x for x in err.strip().splitlines() if x.startswith("study:")]
        assert code == cli.EXIT_BAD_CONFIG and len(lines) == 1, err
        assert {p: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
        return lines[0]

    call.run = run
    return call


def test_too_few_seeds_are_refused(extend_error):
    assert "--seeds 2: the run already has 2 seeds; ask for more, e.g. --seeds 4" in extend_error(
        "--seeds", "2"
    )
    assert "--seeds: required" in extend_error()


def test_a_tampered_run_is_refused(extend_error):
    (extend_error.run / "tuner.pkl").write_bytes(b"planted")
    assert "tuner.pkl" in extend_error("--seeds", "4")


def test_a_run_from_other_code_is_refused(extend_error):
    manifest = extend_error.run / "manifest.json"
    m = json.loads(manifest.read_text())
    m["versions"]["melanoma-ssl-study"] = "0.0.1"
    manifest.write_text(json.dumps(m))
    assert "its trials ran on melanoma-ssl-study '0.0.1'" in extend_error("--seeds", "4")


def test_other_data_is_refused(extend_error, monkeypatch):
    real = runner.prepare_data

    def other(preset):
        source, check = real(preset)
        monkeypatch.setattr(check, "to_dict", lambda: {"fingerprint": "0000"})
        return source, check

    monkeypatch.setattr(runner, "prepare_data", other)
    assert "the data there now has 0000" in extend_error("--seeds", "4")


@pytest.mark.parametrize(
    "looks, args, expected",
    [
        ((2,), ("--seeds", "4"), "declared looks [2] are exhausted"),
        ((2, 4, 6), ("--seeds", "5"), "declares its looks at [2, 4, 6] seeds; the next is --seeds 4"),
    ],
)
def test_declared_looks_are_followed(extend_error, monkeypatch, looks, args, expected):
    real = runner.load_study

    def declared(local, run_uri=None):
        preset, saved = real(local, run_uri)
        return preset.replace(analysis=dataclasses.replace(preset.analysis, looks=looks)), saved

    monkeypatch.setattr(runner, "load_study", declared)
    assert expected in extend_error(*args)


def _state(verdicts: list[str], open_: list[bool]):
    import types

    import numpy as np

    seq = types.SimpleNamespace(verdict=np.array(verdicts, dtype=object), open=np.array(open_))
    return types.SimpleNamespace(
        arms=("rotation", "missing_patch", "corruption"), sequential=seq, any_open=any(open_)
    )


def test_the_next_look_runs_the_baseline_and_the_open_arms_only(smoke_run, monkeypatch):
    """A comparison decided at a look is closed: its arm runs no further seeds (the baseline always does)."""
    from study.run import extend
    from study.run.rundir import load_study

    preset, _ = load_study(smoke_run)
    monkeypatch.setattr(
        extend, "looks_state", lambda *a: _state(["better", "undecided", "undecided"], [False, True, True])
    )
    look = extend.plan_look(smoke_run, preset, [], 4)
    assert [preset.arms[i]["task"] for i in look.arms] == ["none", "missing_patch", "corruption"]
    assert look.seeds == (2, 3) and not look.planned
    closed = extend.not_run(preset, [look])
    assert closed == {"rotation": {2, 3}}
    monkeypatch.setattr(
        extend, "looks_state", lambda *a: _state(["better", "worse", "equivalent"], [False] * 3)
    )
    with pytest.raises(runner.ConfigError, match="every primary comparison is decided"):
        extend.plan_look(smoke_run, preset, [], 4)


def test_seeds_per_look_steps_to_the_target(smoke_run):
    from study.run import extend
    from study.run.rundir import load_study

    preset, _ = load_study(smoke_run)
    assert extend.look_targets(preset, [], 8, 2) == [4, 6, 8]
    assert extend.look_targets(preset, [], 7, 4) == [6, 7]
    assert extend.look_targets(preset, [], 8, None) == [8]
    with pytest.raises(runner.ConfigError, match="--seeds-per-look 0"):
        extend.look_targets(preset, [], 8, 0)


def test_seeds_per_look_is_refused_for_declared_looks(extend_error, monkeypatch):
    real = runner.load_study

    def declared(local, run_uri=None):
        preset, saved = real(local, run_uri)
        return preset.replace(analysis=dataclasses.replace(preset.analysis, looks=(2, 4))), saved

    monkeypatch.setattr(runner, "load_study", declared)
    assert "--seeds-per-look: the study declares its looks" in extend_error(
        "--seeds", "4", "--seeds-per-look", "1"
    )


def test_an_undecided_study_run_prints_the_command_that_would_extend_it(smoke_run):
    """The smoke study (2 seeds) is undecided: its console ends with the one `study extend` command, the
    report's planning figure as --seeds (more than the 2 it ran)."""
    import re

    console = (smoke_run.parent / "smoke.console.txt").read_text()
    found = re.search(
        rf"Undecided: 3 of 3 primary comparison\(s\)\..*study extend {re.escape(str(smoke_run))} --seeds (\d+)",
        console,
    )
    assert found and int(found.group(1)) > 2, console[-1500:]
    assert f"study extend {smoke_run} --seeds {found.group(1)}" in (smoke_run / "report.md").read_text()
