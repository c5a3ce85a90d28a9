"""The pretext cache: keyed by what determines a pretext, trained once under concurrency (no TensorFlow)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from fake_pretext import FakeData, FakeResult

from study.spec.config import TrialConfig
from study.trainables import cached_pretext, pretext_key

# Set in each worker process (_worker): how many callers have entered `cached_pretext`, and how many there are.
_ENTERED = None
_CALLERS = 0
# How long a training goes on after every caller has entered `cached_pretext`: the time the callers that did
# not train have to reach the cache's lock (or, without the lock, to miss the entry and train as well).
OVERLAP_S = 0.5


def trainings(log: Path) -> list[dict]:
    """The trainings `slow_train` recorded: {"seed", "pid", "start", "end"} per call."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def slow_train(trial, data, on_epoch=None):
    """Records each call (seed, process, start and end time) in a log next to the cache. Under concurrency
    (`_ENTERED` set) it trains until every caller has entered `cached_pretext`, and OVERLAP_S longer, so all
    of them are inside the cache while this training is in progress."""
    log = Path(trial.pretext_cache_dir).parent / "trainings.log"
    start = time.time()
    if _ENTERED is not None:
        deadline = start + 120
        while _ENTERED.value < _CALLERS and time.time() < deadline:
            time.sleep(0.01)
    time.sleep(OVERLAP_S if _ENTERED is not None else 0.1)
    with open(log, "a") as f:
        f.write(
            json.dumps({"seed": trial.seed, "pid": os.getpid(), "start": start, "end": time.time()}) + "\n"
        )
    return FakeResult(trial.seed)


class NoLock:
    """What `filelock.FileLock` becomes in a worker started with `locked=False`: the cache without its lock."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _worker(trial_dict, entered, callers, barrier, queue, locked=True):
    global _ENTERED, _CALLERS
    if not locked:
        import filelock

        filelock.FileLock = NoLock  # cached_pretext imports it when called
    _ENTERED, _CALLERS = entered, callers
    trial = TrialConfig.from_dict(trial_dict)
    barrier.wait(timeout=120)  # every process has started and imported everything: look up together
    enter = time.time()
    with entered.get_lock():
        entered.value += 1
    try:
        result, reused, key = cached_pretext(trial, FakeData(), train=slow_train, load=FakeResult.load)
        outcome = {"seed": result.seed, "reused": reused, "key": key, "error": None}
    except Exception as exc:  # noqa: BLE001 - reported to the test (e.g. two unlocked writers of one entry)
        outcome = {"seed": None, "reused": None, "key": None, "error": repr(exc)}
    queue.put({**outcome, "enter": enter, "exit": time.time()})


def _race(tmp_path: Path, callers: int, locked: bool) -> tuple[list[dict], list[dict]]:
    """`callers` processes that need one pretext call `cached_pretext` at once: (their outcomes, trainings)."""
    trial = TrialConfig(task="rotation", seed=3, pretext_cache_dir=str(tmp_path / "cache"))
    # A fork server that has imported the cache's module once (Ray Tune: seconds) forks every worker: a fresh
    # process each, without the threads of this one, and without paying that import per process.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["study.trainables", __name__])
    queue, barrier, entered = ctx.Queue(), ctx.Barrier(callers), ctx.Value("i", 0)
    procs = [
        ctx.Process(target=_worker, args=(trial.to_dict(), entered, callers, barrier, queue, locked))
        for _ in range(callers)
    ]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return outcomes, trainings(tmp_path / "trainings.log")


def assert_overlapped(outcomes: list[dict], trained: list[dict]) -> None:
    """Every caller entered `cached_pretext` before the first training ended (before the entry could exist):
    each one missed the entry at its first look and had to wait for the lock, or train."""
    assert trained, "nothing was trained"
    first_end = min(t["end"] for t in trained)
    late = [o["enter"] - first_end for o in outcomes if o["enter"] >= first_end]
    assert not late, f"callers entered {late} s after the training ended: the processes did not overlap"


def assert_trained_once(outcomes: list[dict], trained: list[dict]) -> None:
    assert [t["seed"] for t in trained] == [3], f"trained {len(trained)} times: {trained}"
    assert not [o["error"] for o in outcomes if o["error"]]
    assert sorted(o["reused"] for o in outcomes) == [False] + [True] * (len(outcomes) - 1)
    assert {o["seed"] for o in outcomes} == {3} and len({o["key"] for o in outcomes}) == 1
    # The callers that reused the entry returned after it was trained: they waited on the lock.
    assert all(o["exit"] >= trained[0]["end"] for o in outcomes)


def test_concurrent_trials_needing_one_pretext_train_it_once(tmp_path):
    outcomes, trained = _race(tmp_path, callers=2, locked=True)
    assert_overlapped(outcomes, trained)
    assert_trained_once(outcomes, trained)
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_the_race_test_catches_a_cache_without_its_lock(tmp_path):
    """The same race with the lock taken out (filelock.FileLock replaced by a no-op in the workers): both
    processes miss the entry and train it, at the same time, and the checks above fail."""
    outcomes, trained = _race(tmp_path, callers=2, locked=False)
    assert_overlapped(outcomes, trained)
    assert len(trained) == 2 and max(t["start"] for t in trained) < min(t["end"] for t in trained)
    with pytest.raises(AssertionError, match="trained 2 times"):
        assert_trained_once(outcomes, trained)


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
    from study.spec.config import resolved_task_params

    assert pretext_key(base.replace(**resolved_task_params(base)), "fp") == key


def test_unshared_pretext_trains_every_time(tmp_path):
    trial = TrialConfig(
        task="rotation", seed=0, pretext_cache_dir=str(tmp_path / "cache"), share_pretext=False
    )
    for _ in range(2):
        _, reused, _ = cached_pretext(trial, FakeData(), train=slow_train, load=FakeResult.load)
        assert not reused
    assert [t["seed"] for t in trainings(tmp_path / "trainings.log")] == [0, 0]
