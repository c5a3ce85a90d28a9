"""What a trial reports to Tune: intermediate results every `report_every` fine-tune epochs (and with every
checkpoint), and a final result whose `finetune_history` holds every epoch, also across a resume; the
runner's history.csv is built from it. The trainable runs in this process with Tune's API replaced by a
recorder (no Ray), on the smoke preset's tiny data."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from study import trainables
from study.run import results as run_results
from study.search_spaces import search_constants
from study.spec.presets import get_preset
from study.spec.resolve import finalize_study


class _Checkpoint:
    """Stands in for `tune.Checkpoint`: a kept copy of the folder it was made from."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_directory(cls, d: str) -> "_Checkpoint":
        return cls(Path(shutil.copytree(d, tempfile.mkdtemp(prefix="fake-ckpt-"), dirs_exist_ok=True)))

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.path)


class _Tune:
    """Records `tune.report` calls; `get_checkpoint` returns what the test set."""

    Checkpoint = _Checkpoint

    def __init__(self, checkpoint: _Checkpoint | None = None) -> None:
        self.reports: list[tuple[dict, _Checkpoint | None]] = []
        self.checkpoint = checkpoint

    def report(self, metrics: dict, checkpoint: _Checkpoint | None = None) -> None:
        self.reports.append((dict(metrics), checkpoint))

    def get_checkpoint(self) -> _Checkpoint | None:
        return self.checkpoint


class _Context:
    def get_node_id(self) -> str:
        return "node-a"


def _run(monkeypatch, config: dict, checkpoint: _Checkpoint | None = None) -> _Tune:
    import ray

    fake = _Tune(checkpoint)
    monkeypatch.setattr(trainables, "tune", fake)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context())
    trainables.two_stage_trial(config)
    return fake


@pytest.fixture
def config(study_env, monkeypatch) -> dict:
    for k, v in study_env.items():
        monkeypatch.setenv(k, v)
    base = get_preset("smoke").base.replace(
        finetune_epochs=5, checkpoint_every=2, report_every=3, share_pretext=False, task="rotation", seed=0
    )
    return base.to_dict()


def _finetune(fake: _Tune) -> list[tuple[dict, _Checkpoint | None]]:
    return [(m, c) for m, c in fake.reports if m["phase"] == "finetune"]


def test_fine_tune_epochs_are_reported_every_report_every_and_with_checkpoints_and_the_final_result_holds_all(
    monkeypatch, config
):
    fake = _run(monkeypatch, config)
    reported = {m["epoch"]: c is not None for m, c in _finetune(fake)}
    # every 3rd epoch (3), every checkpoint (2, 4) and the last (5, with a checkpoint)
    assert reported == {2: True, 3: False, 4: True, 5: True}
    assert [m["phase"] for m, _ in fake.reports].count("pretext") == config["pretext_epochs"]
    done = fake.reports[-1][0]
    assert done["phase"] == "done" and done["finetune_epochs_run"] == 5
    history = json.loads(done["finetune_history"])
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert all(h["node_id"] == "node-a" and h["pid"] == done["pid"] for h in history)
    for m, _ in _finetune(fake):  # a reported epoch's logs are the history's for that epoch
        logged = history[m["epoch"] - 1]
        assert {k: m[k] for k in logged if k not in ("pid", "node_id")} == {
            k: v for k, v in logged.items() if k not in ("pid", "node_id")
        }

    # Resumed from the epoch-4 checkpoint, on another "node": the same history, epochs 1-4 from the checkpoint's
    # record of where they ran, epoch 5 from the new attempt.
    epoch4 = next(c for m, c in _finetune(fake) if m["epoch"] == 4)
    monkeypatch.setattr(_Context, "get_node_id", lambda self: "node-b")
    resumed = _run(monkeypatch, config, checkpoint=epoch4)
    again = resumed.reports[-1][0]
    assert again["finetune_epochs_resumed"] == 4 and again["restored"]
    assert [m["epoch"] for m, _ in _finetune(resumed)] == [5]
    again_history = json.loads(again["finetune_history"])
    assert [h["node_id"] for h in again_history] == ["node-a"] * 4 + ["node-b"]
    strip = [{k: v for k, v in h.items() if k not in ("pid", "node_id")} for h in history]
    assert [{k: v for k, v in h.items() if k not in ("pid", "node_id")} for h in again_history] == strip

    # The runner's history table has every fine-tune epoch although only some were reported as results.
    rows = [m for m, _ in fake.reports]
    record = run_results.TrialRecord(
        path="/runs/x/two_stage_trial_abc_00000",
        config=config,
        metrics=rows[-1],
        metrics_dataframe=pd.json_normalize(rows, sep="/"),
        error=None,
    )
    preset = get_preset("smoke").replace(base=get_preset("smoke").base.replace(finetune_epochs=5))
    _, table, _ = run_results.collect_results([record], preset)
    finetune = table[table["phase"] == "finetune"]
    assert list(finetune["epoch"]) == [1, 2, 3, 4, 5]
    assert list(finetune["val_loss"]) == [h["val_loss"] for h in history]
    assert list(table[table["phase"] == "pretext"]["epoch"]) == list(range(1, config["pretext_epochs"] + 1))


def test_asha_searches_report_every_fine_tune_epoch():
    preset = get_preset("search")
    assert preset.base.report_every > 1  # inherited from the demo
    asha = preset.replace(search=dataclasses.replace(preset.search, asha=True))
    assert search_constants(finalize_study(asha))["report_every"] == 1
    assert search_constants(finalize_study(preset))["report_every"] == preset.base.report_every
