"""The study console (study.run.console.StudyProgress), driven through Tune's callback hooks with stand-in trials."""

from __future__ import annotations

import io
import types

import pytest

from study.run import console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trial(tid: str, task: str, seed: int, fraction: float = 1.0, **arm) -> types.SimpleNamespace:
    config = {
        "arm": {"task": task, **arm},
        "seed": seed,
        "subset": {"label_fraction": fraction},
        "pretext_epochs": 4,
        "finetune_epochs": 16,
    }
    return types.SimpleNamespace(trial_id=tid, config=config, last_result={}, error_file=None)


def _done(trial, aucs: dict[str, float]) -> None:
    trial.last_result = {"phase": "done", "regimes": {k: {"test_auc": v} for k, v in aucs.items()}}


def test_labels_name_task_settings_seed_and_label_budget():
    t = _trial("a", "missing_patch", 3, 0.2, patch_size=11)
    assert console.trial_label(t.config) == "missing_patch patch_size=11 seed 3 20% labels"
    assert console.trial_label(_trial("b", "none", 0).config) == "none seed 0"


def test_plain_output_is_a_line_per_trial_and_rare_progress(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    progress = console.StudyProgress(stream=out, plain_interval_s=60)
    progress.setup(total_num_samples=3)
    trials = [_trial("a", "none", 0), _trial("b", "rotation", 0), _trial("c", "corruption", 0)]
    for t in trials[:2]:
        progress.on_trial_start(0, trials, t)
    for epoch in range(1, 5):  # many results within a minute: no progress lines
        clock[0] += 5
        progress.on_trial_result(0, trials, trials[1], {"phase": "pretext", "epoch": epoch})
    assert "rotation seed 0 pretext 4/4" in progress.status()
    clock[0] += 10
    _done(trials[0], {"none": 0.71, "patience3": 0.7})
    progress.on_trial_complete(0, trials, trials[0])
    clock[0] += 61  # a minute later the next hook prints one progress line
    progress.on_trial_result(0, trials, trials[1], {"phase": "finetune", "epoch": 2})
    error = _trial("c", "corruption", 0)
    progress.on_trial_start(0, trials, error)
    progress.on_trial_error(0, trials, error)
    progress.on_experiment_end(trials)
    lines = out.getvalue().splitlines()
    assert lines[0] == "progress: 0/3 done, 0 running, 3 waiting | 0:00"
    assert lines[1] == "[1/3] done    none seed 0 (30 s): test AUC none 0.71, patience3 0.70"
    assert lines[2].startswith("progress: 1/3 done, 1 running, 1 waiting | rotation seed 0 finetune 2/16")
    assert "ETA" in lines[2]
    assert lines[3].startswith("[2/3] FAILED  corruption seed 0: ")
    assert lines[4].startswith("progress: 2/3 done (1 failed), 1 running, 0 waiting")
    assert len(lines) == 5


def test_the_failed_trials_error_line_comes_from_its_error_file(tmp_path):
    err = tmp_path / "error.txt"
    err.write_text("Failure # 1\nTraceback (most recent call last):\n  ...\nInjectedFault: injected fault\n")
    out = io.StringIO()
    progress = console.StudyProgress(total=1, stream=out)
    t = _trial("a", "rotation", 1)
    t.error_file = str(err)
    progress.on_trial_recover(0, [t], t)
    progress.on_trial_error(0, [t], t)
    text = out.getvalue()
    assert "retry   rotation seed 1 from its last checkpoint: InjectedFault: injected fault" in text
    assert "FAILED  rotation seed 1: InjectedFault: injected fault" in text


def test_a_trial_stopped_before_its_end_is_not_counted_done():
    out = io.StringIO()
    progress = console.StudyProgress(total=2, stream=out)
    t = _trial("a", "none", 0)
    progress.on_trial_start(0, [t], t)
    t.last_result = {"phase": "finetune", "epoch": 3}  # Ctrl-C: Tune completes it without a final result
    progress.on_trial_complete(0, [t], t)
    assert "done    " not in out.getvalue() and progress.status().startswith("0/2 done")


def test_eta_from_finished_trials_over_the_trials_that_run_at_once(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    progress = console.StudyProgress(total=6, stream=io.StringIO(), max_concurrent=2)
    a, b = _trial("a", "none", 0), _trial("b", "none", 1)
    progress.on_trial_start(0, [a, b], a)
    progress.on_trial_start(0, [a, b], b)
    clock[0] = 10.0
    _done(a, {"none": 0.5})
    progress.on_trial_complete(0, [a, b], a)
    # b has run 10 s of a 10 s mean (0 left); 4 wait at 10 s each, 2 at a time: 20 s.
    assert progress.eta_seconds() == pytest.approx(20.0)


def test_live_display_writes_trial_lines_above_one_bar():
    out = _Tty()
    progress = console.StudyProgress(stream=out)
    assert progress.live
    progress.setup(total_num_samples=2)
    t = _trial("a", "rotation", 0)
    progress.on_trial_start(0, [t], t)
    progress.on_trial_result(0, [t], t, {"phase": "pretext", "epoch": 2})
    _done(t, {"none": 0.6})
    progress.on_trial_complete(0, [t], t)
    progress.on_experiment_end([t])
    text = out.getvalue()
    assert "[1/2] done    rotation seed 0" in text
    assert "1/2" in text and "trial" in text  # tqdm's bar: count and unit
    assert "\r" in text  # redrawn in place, not a line per update
