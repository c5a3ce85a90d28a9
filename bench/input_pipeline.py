"""Pretext input pipeline: share of a pretext epoch spent waiting for inputs, per task, side by side.

Run from the repository root (about 2 minutes on 2 CPU cores; `--quick` about 40 s):

    .venv/bin/python bench/input_pipeline.py                 # demo preset settings, 7 timed epochs per task
    .venv/bin/python bench/input_pipeline.py --quick         # 2 timed epochs, 100 synthetic images
    .venv/bin/python bench/input_pipeline.py --encoder resnet50 --size 224 --n-train 80 --batch 16 --repeats 3

Defaults are the demo preset's pretext phase (study.spec.presets.demo): small encoder with widths
8/16/32/64 at 32 px, the demo's synthetic lesions (500 training images -> 400 after the validation split),
pretext batch 32, 1 TensorFlow thread (demo trials run with threads=1). For every task in
`study.tasks.registry.TASKS` that makes input pairs (`make_batch`; SimCLR and BYOL make their views in their
own loop, `study.train.contrastive`, and are left out):

A. The project's own phase, `training.run_pretext`, for 1 + R epochs, with timers around each
   `task.make_batch` call (the task returned by `study.tasks.registry.get_task` is wrapped), each `model.fit`
   call, each call of the phase's epoch hooks (`EpochHooks`) and the epoch boundaries (`on_epoch`).
   `run_pretext` makes each epoch's pairs one epoch ahead in a background thread; everything in an epoch
   outside Keras' training and validation — waiting for those pairs, copying them into the input
   variables, the permutation, callbacks — is time the model waits for inputs (`outside`). The phase trains
   all its epochs in one `fit` call and does that work in its epoch hooks (the contrastive tasks: one `fit`
   per epoch, the work between the calls), so per epoch `fit` = the time inside `fit` calls less the time
   in the hooks, and `outside` = epoch - `fit`. `make_batch` is reported for scale (it runs mostly in the
   background). Epoch 1 (tracing) is dropped.
B. Inside `fit`: one epoch of a fresh model of the same task fed three ways, interleaved R times:
   the project's feed (`batches.IndexedBatches` as run_pretext uses it: one pipeline per phase, each
   epoch's arrays assigned to its variables and batches gathered in the epoch's order), plain numpy arrays (Keras' array
   adapter, rebuilt every call: what the pretext phase passed before), and the same batches as a `tf.data`
   dataset cached in memory and prefetched (warmed by one pass: the ideal feed). `feed` = median(project -
   cached), the project's feeding cost inside fit (noise can make it negative).
C. Per batch: `make_batch` of one batch vs one training step on a batch (cached epoch / batches).

Per task: wait share = (outside + max(0, feed)) / epoch wall time, medians over the timed epochs.
The last line is `input_wait_share=<max over tasks>` (target of issue 8: <= 0.05).

`--one-core` pins the process to one core (`os.sched_setaffinity`): the background thread then competes
with training, as in the demo, where two trials keep both cores busy. Without it the thread has a core.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import time

import benchutil
import numpy as np


@contextlib.contextmanager
def timers():
    """Wrap `study.tasks.registry.get_task` (timed `make_batch`), `keras.Model.fit` and the pretext phase's
    `EpochHooks`; yield the event log.

    Events: ("make_batch", t0, t1, n_images), ("fit", t0, t1, 0) and ("hook", t0, t1, epoch). Restores the
    originals on exit.
    """
    import keras

    from study.tasks import registry as pretext
    from study.train import pretext_phase

    events: list[tuple[str, float, float, int]] = []
    original_get_task, original_fit = pretext.get_task, keras.Model.fit
    original_hooks = pretext_phase.EpochHooks

    class TimedHooks(original_hooks):
        def on_epoch_begin(self, epoch, logs=None):
            t0 = time.perf_counter()
            super().on_epoch_begin(epoch, logs)
            events.append(("hook", t0, time.perf_counter(), epoch))

        def on_epoch_end(self, epoch, logs=None):
            t0 = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            events.append(("hook", t0, time.perf_counter(), epoch))

    def get_task(name):
        task = original_get_task(name)

        def make_batch(images, rng, **params):
            t0 = time.perf_counter()
            out = task.make_batch(images, rng, **params)
            events.append(("make_batch", t0, time.perf_counter(), len(images)))
            return out

        return dataclasses.replace(task, make_batch=make_batch)

    def fit(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = original_fit(self, *args, **kwargs)
        events.append(("fit", t0, time.perf_counter(), 0))
        return out

    pretext.get_task, keras.Model.fit, pretext_phase.EpochHooks = get_task, fit, TimedHooks
    try:
        yield events
    finally:
        pretext.get_task, keras.Model.fit = original_get_task, original_fit
        pretext_phase.EpochHooks = original_hooks


def _overlap(events, kind: str, lo: float, hi: float) -> float:
    """Seconds of the `kind` events that fall within [lo, hi]."""
    return sum(max(0.0, min(t1, hi) - max(t0, lo)) for k, t0, t1, _ in events if k == kind)


def measure_phase(trial, data) -> dict[str, list[float]]:
    """Part A: per timed epoch (2..), seconds of `epoch`, `fit` (inside `fit` calls, less the epoch hooks that
    run there), `make_batch`, `outside` (= epoch - fit)."""
    from study.train import phases as training

    ends: list[float] = []
    with timers() as events:
        start = time.perf_counter()
        result = training.run_pretext(trial, data, on_epoch=lambda e, logs: ends.append(time.perf_counter()))
    if result.diverged:
        raise RuntimeError(f"{trial.task}: pretext diverged at epoch {result.diverged_epoch}")
    bounds = [start, *ends]
    out: dict[str, list[float]] = {"epoch": [], "fit": [], "make_batch": [], "outside": []}
    for e in range(2, len(bounds)):  # epoch e runs from bounds[e-1] to bounds[e]; epoch 1 traces
        lo, hi = bounds[e - 1], bounds[e]
        fit = _overlap(events, "fit", lo, hi) - _overlap(events, "hook", lo, hi)
        out["epoch"].append(hi - lo)
        out["fit"].append(fit)
        out["make_batch"].append(_overlap(events, "make_batch", lo, hi))
        out["outside"].append(hi - lo - fit)
    return out


def measure_fit_feeding(trial, data, repeats: int) -> dict[str, list[float]]:
    """Part B and C: seconds of one epoch from the project's feed, the backend-neutral `PyDataset` feed, numpy
    arrays and (TensorFlow) a cached, prefetched tf.data copy of the same batches (interleaved), and of
    `make_batch` on one batch."""
    import keras

    from study.spec.config import resolved_task_params
    from study.tasks import registry as pretext
    from study.train import backend, batches, models, pretext_phase, splits

    task = pretext.get_task(trial.task)
    params = resolved_task_params(trial)
    keras.backend.clear_session()
    keras.utils.set_random_seed(trial.seed)
    train_index, _ = splits.validation_split(trial, data)
    images = data.train.images[train_index]
    x, y = task.make_batch(images, np.random.default_rng([trial.seed, 1]), **params)
    order = np.random.default_rng([trial.seed, 2]).permutation(len(x))
    x, y = x[order], pretext_phase._as_target(task.head, y[order])
    encoder = models.build_encoder(
        trial.encoder, trial.image_size, trial.encoder_widths, mixed_precision=trial.mixed_precision
    )
    model = models.build_model(task.head, encoder, mixed_precision=trial.mixed_precision)
    model.compile(optimizer=keras.optimizers.Adam(trial.pretext_lr), loss=pretext_phase._pretext_loss(task))
    batch = trial.pretext_batch_size
    cached = _cached_dataset(x, y, batch)

    def numpy_epoch():
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

    def cached_epoch():
        model.fit(cached, epochs=1, shuffle=False, verbose=0)

    def feeding(feed):
        def epoch():  # run_pretext's feed (x, y are in the epoch's order already)
            feed.set_data(x, y)  # a new epoch's pairs are assigned to the pipeline
            model.fit(feed.in_order(np.arange(len(x))), epochs=1, shuffle=False, verbose=0)

        return epoch

    feeds = {
        "numpy": numpy_epoch,
        "project": feeding(batches.IndexedBatches(x, y, batch)),  # the backend's own (TF: tf.data variables)
        "pydataset": feeding(backend.NumpyIndexedBatches(x, y, batch)),  # the backend-neutral feed
    }
    if cached is not None:
        feeds["cached"] = cached_epoch
    for fn in feeds.values():  # warm-up: tracing
        fn()
    out: dict[str, list[float]] = {name: [] for name in feeds} | {"batch_make": []}
    for r in range(repeats):
        order = tuple(feeds.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate the order against drift
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
        one = images[:batch]
        calls = max(1, int(math.ceil(0.05 / max(_time(lambda: task.make_batch(one, 0, **params)), 1e-6))))
        t0 = time.perf_counter()
        for c in range(calls):
            task.make_batch(one, np.random.default_rng([trial.seed, 3, r, c]), **params)
        out["batch_make"].append((time.perf_counter() - t0) / calls)
    out["batches"] = [math.ceil(len(x) / batch)]
    return out


def _cached_dataset(x, y, batch: int):
    """The batches as a `tf.data` dataset cached in memory and prefetched (the ideal feed), on TensorFlow;
    None on other backends."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().prefetch(tf.data.AUTOTUNE)
    for _ in ds:  # fill the cache
        pass
    return ds


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per task in A and B (>= 2)")
    parser.add_argument("--quick", action="store_true", help="tiny: 2 timed epochs, 100 synthetic images")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: the demo's)")
    parser.add_argument("--encoder", default=None, help="encoder (default: the demo's small encoder)")
    parser.add_argument("--size", type=int, default=None, help="image size in px (default: the demo's 32)")
    parser.add_argument("--n-train", type=int, default=None, help="synthetic training images (default 500)")
    parser.add_argument("--batch", type=int, default=None, help="pretext batch size (default: the demo's 32)")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16 models")
    parser.add_argument("--tasks", nargs="+", default=None, help="pretext tasks (default: all)")
    parser.add_argument("--one-core", action="store_true", help="pin the process to one core")
    args = parser.parse_args()
    if args.one_core:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.quick:
        args.repeats = 2
        args.n_train = args.n_train or 100
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    benchutil.use_temp_cache("input-pipeline-")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from study.data import load_dataset
    from study.data.trial_source import cache_dir, data_source
    from study.spec.presets import demo
    from study.tasks import registry as pretext
    from study.train import backend, splits
    from study.train import phases as training

    base = demo().base
    changes = {"pretext_epochs": args.repeats + 1, "mixed_precision": args.mixed_precision}
    if args.encoder:
        changes["encoder"] = args.encoder
    if args.size:
        changes["image_size"] = args.size
    if args.n_train:
        changes["synth_n_train"] = args.n_train
        changes["synth_n_test"] = max(20, args.n_train // 5)
    if args.batch:
        changes["pretext_batch_size"] = args.batch
    if args.threads:
        changes["threads"] = args.threads
    base = base.replace(**changes)
    paired = [name for name, task in pretext.TASKS.items() if task.make_batch is not None]
    for name in set(args.tasks or ()) - set(paired):
        parser.error(f"--tasks: {name!r} is not a task that makes input pairs; choose from {paired}")
    training.configure(base.threads)
    data = load_dataset(data_source(base), base.image_size, cache_dir=cache_dir(base))
    n_train = len(splits.validation_split(base, data)[0])
    print(
        f"pretext input wait: encoder={base.encoder} widths={list(base.encoder_widths)} "
        f"{base.image_size} px, {n_train} training images, batch {base.pretext_batch_size}, "
        f"threads={base.threads}, mixed_precision={base.mixed_precision}, "
        f"cores={len(os.sched_getaffinity(0))}; seconds, "
        f"min / median / max over {args.repeats} timed epochs"
    )
    shares, ratios = {}, {}
    for name in args.tasks or paired:
        trial = base.replace(task=name)
        a = measure_phase(trial, data)
        b = measure_fit_feeding(trial, data, args.repeats)
        epoch, outside = benchutil.median(a["epoch"]), benchutil.median(a["outside"])
        ideal = b.get("cached", b["project"])  # without TensorFlow, the project's feed is the reference
        feed = [p - c for p, c in zip(b["project"], ideal)]
        step = benchutil.median(ideal) / b["batches"][0]
        shares[name] = (outside + max(0.0, benchutil.median(feed))) / epoch
        ratios[name] = benchutil.median(b["pydataset"]) / benchutil.median(b["project"])
        rows = (
            ("A run_pretext epoch", a["epoch"]),
            ("  model.fit (train + validation)", a["fit"]),
            ("  make_batch (epoch's pairs)", a["make_batch"]),
            ("  outside fit = input wait", a["outside"]),
            ("B fit, project feed", b["project"]),
            ("  fit from cached tf.data (ideal)", b.get("cached", [])),
            ("  feed = project - cached", feed if "cached" in b else []),
            ("  fit, PyDataset feed (neutral)", b["pydataset"]),
            ("  fit from numpy arrays (before)", b["numpy"]),
            ("  numpy - cached", [n - c for n, c in zip(b["numpy"], ideal)] if "cached" in b else []),
        )
        print(f"{name}")
        for label, values in rows:
            print(f"  {label:<34} {benchutil.fmt_mmm(values, '7.3f')} s")
        print(
            f"  C make_batch / training step, per batch of {base.pretext_batch_size}: "
            f"{benchutil.median(b['batch_make']) / step:.3f}"
        )
        print(
            f"  wait share = (outside {outside:.3f} + feed {max(0.0, benchutil.median(feed)):.3f}) / "
            f"epoch {epoch:.3f} = {shares[name]:.3f}   (outside fit alone: {outside / epoch:.3f})",
            flush=True,
        )
    for name, share in shares.items():
        print(f"input_wait_share_{name}={share:.3f}")
    for name, ratio in ratios.items():
        print(f"pydataset_over_project_{name}={ratio:.3f}")
    print(f"input_wait_share={max(shares.values()):.3f}")
    print(f"backend={backend.version()}")


if __name__ == "__main__":
    main()
