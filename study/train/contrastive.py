"""The pretext phase of a task with a two-view step (`study.tasks.steps.TwoViewStep`; SimCLR, BYOL), and the
verdict on what it learned.

`run_two_view_step(task, run)` is the implementation `study.train.pretext_phase` looks up for a
`TwoViewStep`: the task's `step.settings` turns its resolved parameters into the phase's settings
(projection sizes, view parameters, temperature or EMA base), and `train_contrastive` trains the model the
declaration asks for (`study.train.contrastive_models`: loss, predictor, EMA target). Nothing here names a
task; every parameter, default and range is the task registration's.

Training (`train_contrastive`): Keras `fit` drives the epochs of a `keras.Model` subclass whose
`train_step` / `test_step` / `predict_step` are the method's own; Adam(lr). Views for epoch e are
`two_views(train images, default_rng([seed, STREAM_VIEWS, e]))`, made one epoch ahead in a background thread;
batch order `default_rng([seed, STREAM_ORDER, e]).permutation`; batches of exactly `batch_size` (the
remainder of a permutation is left out of that epoch: the loss depends on the batch size); validation views
once, from `default_rng([seed, STREAM_VAL])`; test views from `default_rng([seed, STREAM_TEST])`, the same
for every run with that seed. Head weights come from `keras.initializers` seeded from `default_rng([seed,
STREAM_INIT])`. With op determinism on (`study.train.backend.configure`, which the caller runs
first, as `run_pretext` does) the same seed gives bitwise-identical weights and history. The stream ids are
distinct from `study.train.pretext_phase`'s `STREAM_*` (a test checks).

The compiled model comes from `study.train.model_cache` (a reused worker does not re-trace it): the model
wraps a clone of the given encoder, and the trained weights are copied into the given encoder at the end, so
the cache never holds (or later trains) a caller's encoder.

Divergence: a non-finite training or validation loss at the end of an epoch stops the phase without raising,
as in `run_pretext`: the diverged epoch is not in the history, `on_epoch` is not called for it, the given
encoder keeps the weights it came with, and the result has `diverged=True`, `encoder_weights=[]`,
`metrics={}`.

Did it learn? (`study.tasks.references.contrastive_scores`, pure numpy; docs SSL.md "Did the pretext
learn?") On the pooled encoder features (the representation the fine-tune inherits; the projector is
discarded) of two test views per image: contrastive top-1 accuracy against chance and against the same
encoder before this phase, with a one-sided exact test; plus alignment and uniformity.

Cost, measured on this project's 2-core CPU machine (shared with other jobs, so +-50 %), 1 TensorFlow
thread, small encoder (widths 16-128, stride 32), batch 32: at 32 px a SimCLR step (64 views forward and
backward) takes ~0.06 s (~1.9 ms per image), BYOL ~0.065-0.1 s (predictor, target pass, EMA update); at
64 px ~0.2 s and ~0.15 s. The first call of a process also traces the model: 8-12 s on top (more under
load); `study.train.model_cache` keeps it, so later calls with the same architecture do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import layers

from study.tasks import views
from study.tasks.references import contrastive_scores
from study.tasks.registry import PretextTask, check_images
from study.tasks.steps import TwoViewSettings, TwoViewStep
from study.train import model_cache, models
from study.train.batches import batched
from study.train.contrastive_models import (
    HEAD_BN_MOMENTUM,
    EmaTargetModel,
    NtXentModel,
    _clone,
    _ContrastiveModel,
    build_predictor,
    build_projector,
)
from study.train.results import EpochLogs, PretextResult, PretextRun

# Random streams: `default_rng([seed, STREAM, epoch])` per epoch, `default_rng([seed, STREAM])` when fixed.
# Distinct from study.train.pretext_phase's and finetune_phase's STREAM_* (11-14, 21).
STREAM_VIEWS = 31  # training views, fresh each epoch
STREAM_ORDER = 32  # batch order within an epoch
STREAM_VAL = 33  # validation views, once per phase
STREAM_TEST = 34  # test views: fixed per seed
STREAM_INIT = 35  # seeds of the projector / predictor initialisers

#: Prediction batch size for embeddings (fixed, so the numbers do not depend on the training batch size).
EMBED_BATCH_SIZE = 64


def run_two_view_step(task: PretextTask, run: PretextRun) -> PretextResult:
    """The pretext phase of a task with a `TwoViewStep`: `train_contrastive` with the settings the task
    makes of its resolved parameters, on the run's images, scored on two views of its test images; a
    `PretextResult` of `run.trial.task`."""
    trial = run.trial
    settings = task.step.settings(int(run.encoder.input.shape[1]), run.params)
    result = train_contrastive(
        task,
        run.encoder,
        run.train_images,
        run.val_images,
        settings=settings,
        seed=trial.seed,
        epochs=trial.pretext_epochs,
        batch_size=trial.pretext_batch_size,
        lr=trial.pretext_lr,
        on_epoch=run.on_epoch,
        images_test=run.test_images,
        patience=trial.pretext_patience,
    )
    return dataclasses.replace(result.as_pretext_result(), task=trial.task)


@dataclass
class ContrastiveResult:
    """Outcome of `train_contrastive`; fields as `study.train.results.PretextResult` where they overlap.

    `history`: per epoch `{"epoch" (1-based), "loss", "val_loss"}`. `metrics`: `contrastive_scores` on the
    test views (`{}` without test images or after a divergence). `encoder_weights`: the trained encoder's
    `get_weights()` (`[]` when diverged). `examples`: uint8 `(4, S, S, 3)` `images`, `view1`, `view2` of
    the first test images (`{}` without test images). `cost`: `seconds` (wall, the whole call),
    `fit_seconds`, `view_seconds` (making training views, in the background thread), `steps`,
    `images_seen` (steps x batch size), `views_seen` (twice that), `epochs_run`, `flops` (estimated
    training FLOPs, as `study.train.results.PretextResult.cost` defines them). `timings`: per epoch
    `{"epoch", "fit_s"}`.
    """

    kind: str  # the task's name
    history: list[EpochLogs]
    metrics: dict[str, Any]
    encoder_weights: list[np.ndarray]
    diverged: bool = False
    diverged_epoch: int | None = None
    stopped_epoch: int | None = None
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    timings: list[dict[str, float]] = field(default_factory=list)

    def as_pretext_result(self):
        """The same outcome as a `study.train.results.PretextResult` (task = kind, the task's name; of the
        cost, `images_seen` and `flops`, which `run_pretext` completes with the phase's time and device;
        timings dropped)."""
        return PretextResult(
            task=self.kind,
            encoder_weights=self.encoder_weights,
            metrics=self.metrics,
            history=self.history,
            diverged=self.diverged,
            diverged_epoch=self.diverged_epoch,
            examples=self.examples,
            stopped_epoch=self.stopped_epoch,
            cost={k: self.cost[k] for k in ("images_seen", "flops") if k in self.cost},
        )


# ---------------------------------------------------------------------------------------------------------
# training
def train_contrastive(
    task: PretextTask,
    encoder: keras.Model,
    images_train: np.ndarray,
    images_val: np.ndarray,
    *,
    settings: TwoViewSettings,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    on_epoch: Callable[[int, EpochLogs], None] | None = None,
    preprocess: keras.layers.Layer | None = None,
    images_test: np.ndarray | None = None,
    patience: int | None = None,
    head_bn_momentum: float = HEAD_BN_MOMENTUM,
) -> ContrastiveResult:
    """Train `encoder` in place with the two-view method `task.step` declares; see the module docstring.

    `task`: a registered task with a `TwoViewStep` (its `loss` picks the method). `settings`: the phase's
    settings (`task.step.settings(image_size, resolved params)`). `encoder`: a built `keras.Model` taking
    preprocessed `(N, S, S, 3)` float input (`models.build_encoder`), output `(N, h, w, C)`. `images_train`,
    `images_val`: uint8 `(N, S, S, 3)` (at least `batch_size` training images and 2 validation images).
    `preprocess`: the layer that maps uint8 images to the encoder's input (default `models.ImagePreprocess`,
    ResNet50's caffe preprocessing). `images_test`: when given, `metrics` are `contrastive_scores` on two test
    views per image (groups of `batch_size`), beside the encoder as it came in. `patience`: Keras
    `EarlyStopping(val_loss, restore_best_weights=True)` when set and > 0 (0 and None: off, as
    `pretext_patience`). `on_epoch(epoch, logs)`: after each completed epoch (1-based).

    `val_loss` is the same loss on fixed validation views, in inference mode (BatchNorm moving statistics),
    in batches of `min(batch_size, len(images_val))` (remainder left out).
    """
    started = time.perf_counter()
    images = (images_train, images_val, images_test)
    x_train, x_val = _check_args(
        task, encoder, images, seed, epochs, batch_size, lr, settings, patience, head_bn_momentum
    )
    vp = views.validate_view_params(int(encoder.input.shape[1]), **dict(settings.view_params))
    preprocess = models.ImagePreprocess(name="preprocess") if preprocess is None else preprocess
    steps = len(x_train) // batch_size
    loop = _EpochLoop(x_train, vp, seed, epochs, batch_size, on_epoch)
    try:
        val_views = views.two_views(x_val, np.random.default_rng([seed, STREAM_VAL]), **vp)
        model = _compiled_model(
            task, settings, encoder, preprocess, seed, lr, epochs * steps, head_bn_momentum
        )
        test = None
        if images_test is not None:
            test_views = views.two_views(images_test, np.random.default_rng([seed, STREAM_TEST]), **vp)
            test = (test_views, _predict(model, test_views))  # the encoder as it came in: the reference
        loop.run(model, val_views, min(batch_size, len(x_val)), patience)
    finally:
        loop.close()
    epochs_run = len(loop.history) + (loop.diverged_epoch is not None)
    cost = _cost(epochs_run, steps, batch_size, loop.view_seconds, loop.timings)
    # Each view trains the online encoder (3 forward passes' worth); an EMA target also encodes every view.
    passes = models.TRAIN_FLOPS_FACTOR + (1 if task.step.ema_target else 0)
    cost["flops"] = float(models.forward_flops(encoder) * passes * cost["views_seen"])
    if loop.diverged_epoch is not None:
        cost["seconds"] = time.perf_counter() - started
        return ContrastiveResult(
            task.name, loop.history, {}, [], True, loop.diverged_epoch, cost=cost, timings=loop.timings
        )
    loop.callbacks.on_train_end()  # EarlyStopping puts the best epoch's weights back here
    early = loop.early
    stopped = early.stopped_epoch + 1 if early is not None and early.stopped_epoch > 0 else None
    result = _scored(task.name, model, test, images_test, batch_size, loop, stopped, cost)
    if not result.diverged:
        encoder.set_weights(model.encoder.get_weights())
        result.encoder_weights = encoder.get_weights()
    result.cost["seconds"] = time.perf_counter() - started
    return result


class _EpochLoop:
    """The epochs of one phase: views made one epoch ahead in a background thread, one `fit` call per
    epoch, early stopping, divergence, `on_epoch`. Holds what the phase reports afterwards (`history`,
    `timings`, `view_seconds`, `diverged_epoch`, the `callbacks` and `early` stopping it drove)."""

    def __init__(self, x_train, vp, seed, epochs, batch_size, on_epoch) -> None:
        self.x_train, self.vp, self.seed, self.epochs, self.batch_size = x_train, vp, seed, epochs, batch_size
        self.on_epoch = on_epoch
        self.history: list[EpochLogs] = []
        self.timings: list[dict[str, float]] = []
        self.view_seconds = 0.0
        self.diverged_epoch: int | None = None
        self.early: Any = None
        self.callbacks: Any = None
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="contrastive-views")
        self._upcoming = self._ahead.submit(self._make_views, 0)

    def _make_views(self, epoch: int) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        rng = np.random.default_rng([self.seed, STREAM_VIEWS, epoch])
        v1, v2 = views.two_views(self.x_train, rng, **self.vp)
        return v1, v2, time.perf_counter() - t0

    def close(self) -> None:
        self._ahead.shutdown(wait=False, cancel_futures=True)

    def run(self, model: _ContrastiveModel, val_views: tuple, val_batch: int, patience: int | None) -> None:
        val_data = batched(tuple(val_views), val_batch, drop_remainder=True)
        self.early = (
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
            if patience
            else None
        )
        self.callbacks = keras.callbacks.CallbackList([self.early] if self.early else [], model=model)
        self.callbacks.on_train_begin()
        steps = len(self.x_train) // self.batch_size
        for epoch in range(self.epochs):
            v1, v2, made_s = self._upcoming.result()
            self.view_seconds += made_s
            if epoch + 1 < self.epochs:
                self._upcoming = self._ahead.submit(self._make_views, epoch + 1)
            order = np.random.default_rng([self.seed, STREAM_ORDER, epoch]).permutation(len(v1))[
                : steps * self.batch_size
            ]
            data = batched((v1[order], v2[order]), self.batch_size, drop_remainder=True)
            if not self._fit_epoch(model, data, val_data, epoch) or model.stop_training:
                break

    def _fit_epoch(self, model: _ContrastiveModel, data: Any, val_data: Any, epoch: int) -> bool:
        """One epoch; False when it diverged."""
        t0 = time.perf_counter()
        fit = model.fit(
            data, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0, validation_data=val_data
        )
        self.timings.append({"epoch": epoch + 1, "fit_s": time.perf_counter() - t0})
        logs = {
            "epoch": epoch + 1,
            "loss": float(fit.history["loss"][-1]),
            "val_loss": float(fit.history["val_loss"][-1]),
        }
        if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
            self.diverged_epoch = epoch + 1
            return False
        self.history.append(logs)
        self.callbacks.on_epoch_end(epoch, dict(logs))
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, dict(logs))
        return True


def _cost(epochs_run: int, steps: int, batch_size: int, view_seconds: float, timings: list) -> dict:
    """The cost entries of `ContrastiveResult` but `flops` and `seconds`."""
    return {
        "fit_seconds": float(sum(t["fit_s"] for t in timings)),
        "view_seconds": float(view_seconds),
        "steps": float(epochs_run * steps),
        "images_seen": float(epochs_run * steps * batch_size),
        "views_seen": float(2 * epochs_run * steps * batch_size),
        "epochs_run": float(epochs_run),
    }


def _scored(kind, model, test, images_test, batch_size, loop, stopped, cost) -> ContrastiveResult:
    """The result after training: `contrastive_scores` on the test views (when given) and examples; diverged
    when the trained model's test features are not finite. `encoder_weights` are filled in by the caller."""
    metrics: dict[str, Any] = {}
    examples: dict[str, np.ndarray] = {}
    if test is not None:
        (t1, t2), initial = test
        final = _predict(model, (t1, t2))
        if not all(np.all(np.isfinite(a)) for a in final):
            return ContrastiveResult(
                kind, loop.history, {}, [], True, len(loop.history), stopped, cost=cost, timings=loop.timings
            )
        metrics = contrastive_scores(final[0], final[1], initial[0], initial[1], group_size=batch_size)
        proj = contrastive_scores(final[2], final[3], group_size=batch_size)
        metrics["proj_top1"] = proj["top1"]
        n = min(4, len(t1))
        examples = {"images": np.asarray(images_test[:n]), "view1": t1[:n], "view2": t2[:n]}
    return ContrastiveResult(
        kind, loop.history, metrics, [], stopped_epoch=stopped, examples=examples, cost=cost,
        timings=loop.timings,
    )


def _compiled_model(
    task: PretextTask,
    settings: TwoViewSettings,
    encoder: keras.Model,
    preprocess: keras.layers.Layer,
    seed: int,
    lr: float,
    total_steps: int,
    head_bn_momentum: float,
) -> _ContrastiveModel:
    """The phase's compiled model of the method `task` declares, through `study.train.model_cache` (key:
    everything the traced steps depend on apart from shapes, the optimizer and the variables)."""
    step: TwoViewStep = task.step
    online = _clone(encoder, "online_encoder")
    channels = int(online.output.shape[-1])
    seeds = np.random.default_rng([seed, STREAM_INIT]).integers(0, 2**31 - 1, size=2)
    width, dim = settings.projection_width, settings.projection_dim
    projector = build_projector(
        channels, width, dim, output_bn=step.projector_bn, seed=int(seeds[0]), bn_momentum=head_bn_momentum
    )
    if step.ema_target:  # with a predictor: `TwoViewStep.check` allows no other combination
        predictor = build_predictor(dim, width, seed=int(seeds[1]), bn_momentum=head_bn_momentum)
        fresh: _ContrastiveModel = EmaTargetModel(
            online, projector, predictor, preprocess, settings.ema_base, total_steps, name=task.loss
        )
    else:
        fresh = NtXentModel(online, projector, preprocess, settings.temperature, name=task.loss)
    fresh.built = True
    arch = hashlib.sha256(
        (
            encoder.to_json() + projector.to_json() + repr(keras.saving.serialize_keras_object(preprocess))
        ).encode()
    ).hexdigest()
    key = ("contrastive", task.loss, step.predictor, step.ema_target, arch, float(head_bn_momentum))
    return model_cache.compiled(key, fresh, lambda: keras.optimizers.Adam(lr), None)


def _predict(model: _ContrastiveModel, pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """`(h1, h2, z1, z2)` float64: pooled features and projections of both views, in inference mode."""
    both = np.concatenate(pair)
    h, z = model.predict(both, batch_size=EMBED_BATCH_SIZE, verbose=0)
    n = len(pair[0])
    h, z = np.asarray(h, np.float64), np.asarray(z, np.float64)
    return h[:n], h[n:], z[:n], z[n:]


def embed(
    encoder: keras.Model, images: np.ndarray, preprocess: keras.layers.Layer | None = None
) -> np.ndarray:
    """Pooled encoder features float64 `(N, C)` of uint8 images `(N, S, S, 3)`, in inference mode
    (global average pool of the encoder output, after `preprocess`, default `models.ImagePreprocess`)."""
    x = check_images(images)
    preprocess = models.ImagePreprocess() if preprocess is None else preprocess
    inputs = keras.Input(x.shape[1:], dtype="uint8")
    pooled = layers.GlobalAveragePooling2D(dtype="float32")(encoder(preprocess(inputs)))
    out = keras.Model(inputs, pooled).predict(x, batch_size=EMBED_BATCH_SIZE, verbose=0)
    return np.asarray(out, np.float64)


def _check_args(
    task, encoder, images, seed, epochs, batch_size, lr, settings, patience, head_bn_momentum
) -> tuple[np.ndarray, np.ndarray]:
    """The checked training and validation images; `ValueError` ending with the fix for anything unusable."""
    if not isinstance(task, PretextTask) or not isinstance(task.step, TwoViewStep):
        raise ValueError(f"task must be a registered task with a TwoViewStep; got {task!r}")
    if not isinstance(encoder, keras.Model) or len(encoder.input.shape) != 4:
        raise ValueError(
            "encoder must be a built keras.Model on (N, S, S, 3) input; use models.build_encoder"
        )
    x_train, x_val = _checked_images(int(encoder.input.shape[1]), *images)
    for name, v, low in (("epochs", epochs, 1), ("batch_size", batch_size, 2), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {v!r}; use e.g. {name}={max(low, 4)}")
    for name in ("projection_dim", "projection_width"):
        v = getattr(settings, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}; use e.g. {name}=64")
    if len(x_train) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {len(x_train)} training images (every batch has "
            f"exactly batch_size images); use batch_size <= {len(x_train)}"
        )
    if len(x_val) < 2:
        raise ValueError(
            f"images_val holds {len(x_val)} image(s); the validation loss needs at least 2 (one pair of "
            "images per batch); use a larger validation split"
        )
    numbers = [
        ("lr", lr, lambda a: a > 0, "lr=1e-3"),
        ("head_bn_momentum", head_bn_momentum, lambda a: 0 <= a < 1, f"head_bn_momentum={HEAD_BN_MOMENTUM}"),
    ]
    if task.step.ema_target:
        numbers.append(("ema_base", settings.ema_base, lambda a: 0 <= a < 1, "ema_base=0.99"))
    else:
        numbers.append(("temperature", settings.temperature, lambda a: a > 0, "temperature=0.2"))
    for name, v, ok, fix in numbers:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.floating, np.integer))
            or not (math.isfinite(v) and ok(v))
        ):
            raise ValueError(f"{name}={v!r} is out of range; use e.g. {fix}")
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0
    ):
        raise ValueError(f"patience must be None or an integer >= 0; got {patience!r}; use e.g. patience=3")
    return x_train, x_val


def _checked_images(size: int, images_train, images_val, images_test) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation images, checked (and the test images: at least 2), all `size` px."""
    arrays = []
    for name, x in (("images_train", images_train), ("images_val", images_val), ("images_test", images_test)):
        if x is None and name == "images_test":
            continue
        x = check_images(x)
        if name == "images_test" and len(x) < 2:
            raise ValueError(
                f"images_test holds {len(x)} image(s); scoring needs at least 2 (a positive and a negative); "
                "pass more test images or images_test=None"
            )
        if x.shape[1] != size:
            raise ValueError(
                f"{name} are {x.shape[1]} px but the encoder takes {size} px; decode the images at {size} px"
            )
        arrays.append(x)
    return arrays[0], arrays[1]
