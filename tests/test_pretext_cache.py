"""The pretext cache: keyed by what determines a pretext, trained once under concurrency (no TensorFlow)."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

from study.config import TrialConfig
from study.trainables import cached_pretext, pretext_key


@dataclass
class FakeData:
    fingerprint: str = "abc123"


@dataclass
class FakeResult:
    """Stands in for training.PretextResult: what the cache stores and loads."""

    seed: int

    def save(self, d: Path) -> None:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "fake.json").write_text(json.dumps({"seed": self.seed}))

    @classmethod
    def load(cls, d: Path) -> "FakeResult":
        return cls(**json.loads((Path(d) / "fake.json").read_text()))


def slow_train(trial, data, on_epoch=None):
    """Counts its calls in a log next to the cache and takes a second, so two callers overlap."""
    log = Path(trial.pretext_cache_dir).parent / "trainings.log"
    with open(log, "a") as f:
        f.write(f"{trial.seed}\n")
    time.sleep(1.0)
    return FakeResult(trial.seed)


def _worker(trial_dict, queue):
    trial = TrialConfig.from_dict(trial_dict)
    result, reused, key = cached_pretext(trial, FakeData(), train=slow_train, load=FakeResult.load)
    queue.put((result.seed, reused, key))


def test_concurrent_trials_needing_one_pretext_train_it_once(tmp_path):
    trial = TrialConfig(task="rotation", seed=3, pretext_cache_dir=str(tmp_path / "cache"))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(trial.to_dict(), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert (tmp_path / "trainings.log").read_text().split() == ["3"]
    assert sorted(reused for _, reused, _ in outcomes) == [False, True, True]
    assert {seed for seed, _, _ in outcomes} == {3} and len({key for *_, key in outcomes}) == 1
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_cache_key_changes_with_what_determines_the_pretext_only():
    base = TrialConfig(task="corruption", seed=1)
    key = pretext_key(base, "fp")
    assert pretext_key(base.replace(lr=0.5, finetune_epochs=3, patiences=(0,)), "fp") == key  # fine-tune only
    for changed in (
        base.replace(seed=2),
        base.replace(swap_count=7),
        base.replace(pretext_lr=0.1),
        base.replace(pretext_epochs=9),
        base.replace(image_size=32),
        base.replace(encoder="resnet50"),
        base.replace(threads=2),
    ):
        assert pretext_key(changed, "fp") != key
    assert pretext_key(base, "other data") != key
    # Unset parameters resolve to the paper defaults: the explicit default value gives the same key.
    from study.config import resolved_task_params

    assert pretext_key(base.replace(**resolved_task_params(base)), "fp") == key


def test_unshared_pretext_trains_every_time(tmp_path):
    trial = TrialConfig(
        task="rotation", seed=0, pretext_cache_dir=str(tmp_path / "cache"), share_pretext=False
    )
    for _ in range(2):
        _, reused, _ = cached_pretext(trial, FakeData(), train=slow_train, load=FakeResult.load)
        assert not reused
    assert (tmp_path / "trainings.log").read_text().split() == ["0", "0"]
