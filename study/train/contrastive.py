"""SimCLR and BYOL pretext training for a Keras 3 encoder, and the measures that say whether it learned.

Building blocks for the `simclr` and `byol` pretext tasks (issue 17; docs SSL.md, "SimCLR and BYOL"). Not
registered as tasks here: `train_contrastive` is the custom training step a task that brings its own
training (two views, EMA update) calls instead of a batch transform.

Methods
- SimCLR (Chen et al. 2020): the 2B views of a batch (two per image, `study.tasks.views.two_views`) go through the
  encoder (in one pass: BatchNorm sees all 2B, SimCLR's "global BN" on one device), global average pooling
  and a projection MLP (`build_projector`: Dense, BN, ReLU, Dense, BN without centre, as SimCLR's code);
  loss `nt_xent_loss` with temperature over the 2B - 1 other views.
- BYOL (Grill et al. 2020): online network (encoder, projector, predictor) and a target network (encoder,
  projector: a clone, initialised to the online weights) whose trainable weights follow the online ones by an
  exponential moving average after every step, `target <- tau_k target + (1 - tau_k) online`, with `tau_k =
  ema_momentum(k, K, ema_base)` rising from `ema_base` to 1 on a cosine schedule over the K steps of the phase.
  Loss `byol_loss(online prediction of view 1, target projection of view 2)`, symmetrised (the mean of both
  directions, so it lies in [0, 4]). The target runs in training mode (batch statistics), as in BYOL; its
  BatchNorm moving statistics follow its own batches.

Training (`train_contrastive`): Keras `fit` drives the epochs of a `keras.Model` subclass (`SimCLRModel`,
`BYOLModel`) whose `train_step` / `test_step` / `predict_step` are the methods' own; Adam(lr). Views for epoch
e are `two_views(train images, default_rng([seed, STREAM_VIEWS, e]))`, made one epoch ahead in a background
thread; batch order `default_rng([seed, STREAM_ORDER, e]).permutation`; batches of exactly `batch_size`
(the remainder of a permutation is left out of that epoch: the loss depends on the batch size); validation
views once, from `default_rng([seed, STREAM_VAL])`; test views from `default_rng([seed, STREAM_TEST])`, the
same for every run with that seed. Head weights come from `keras.initializers` seeded from
`default_rng([seed, STREAM_INIT])`. With op determinism on (`study.train.phases.configure_tensorflow`, which
the caller runs first, as `run_pretext` does) the same seed gives bitwise-identical weights and history.
The stream ids are distinct from `study.train.phases`'s `STREAM_*` (a test checks).

The compiled model comes from `study.train.model_cache` (a reused worker does not re-trace it): the model wraps a
clone of the given encoder, and the trained weights are copied into the given encoder at the end, so the
cache never holds (or later trains) a caller's encoder. Temperature, EMA base and step count are variables,
so one traced model serves every value.

Divergence: a non-finite training or validation loss at the end of an epoch stops the phase without raising,
as in `run_pretext`: the diverged epoch is not in the history, `on_epoch` is not called for it, the given
encoder keeps the weights it came with, and the result has `diverged=True`, `encoder_weights=[]`,
`metrics={}`.

Did it learn? (`contrastive_scores`, pure numpy; docs SSL.md "Did the pretext learn?") On the pooled encoder
features (the representation the fine-tune inherits; the projector is discarded) of two test views per image:
contrastive top-1 accuracy (each view's positive must be the most similar of the 2G - 1 other views of its
group of G images, G = the training batch size), against chance 1/(2G - 1) and against the same encoder
before this phase (its initial weights: random for `weights="random"`), with a one-sided exact test; plus
alignment and uniformity (Wang & Isola 2020) beside the initial encoder's.

Cost, measured on this project's 2-core CPU machine (shared with other jobs, so +-50 %), 1 TensorFlow
thread, small encoder (widths 16-128, stride 32), batch 32: at 32 px a SimCLR step (64 views forward and
backward) takes ~0.06 s (~1.9 ms per image), BYOL ~0.065-0.1 s (predictor, target pass, EMA update); at
64 px ~0.2 s and ~0.15 s. The first call of a process also traces the model: 8-12 s on top (more under
load); `study.train.model_cache` keeps it, so later calls with the same architecture do not.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from study.train import model_cache

from study.train import models

from study.tasks import views
from study.tasks.registry import check_images

KINDS = ("simclr", "byol")

# Random streams: `default_rng([seed, STREAM, epoch])` per epoch, `default_rng([seed, STREAM])` when fixed.
# Distinct from study.train.phases's STREAM_* (11-14, 21).
STREAM_VIEWS = 31  # training views, fresh each epoch
STREAM_ORDER = 32  # batch order within an epoch
STREAM_VAL = 33  # validation views, once per phase
STREAM_TEST = 34  # test views: fixed per seed
STREAM_INIT = 35  # seeds of the projector / predictor initialisers

#: Prediction batch size for embeddings (fixed, so the numbers do not depend on the training batch size).
EMBED_BATCH_SIZE = 64
#: BatchNorm momentum of the projector and predictor (Keras' 0.99 is too slow for short phases, SSL.md).
HEAD_BN_MOMENTUM = 0.9
#: One-sided level of the learned verdict (as `study.tasks.references.LEARNED_ALPHA`).
LEARNED_ALPHA = 0.05

#: The task parameters of each method, for a task registration. `batch_size` and `lr` are the pretext
#: phase's own (TrialConfig's pretext_batch_size / pretext_lr); `view_strength` and `crop_scale_min` give
#: the view parameters through `view_params_for`.
TASK_PARAMS: dict[str, tuple[str, ...]] = {
    "simclr": (
        "batch_size",
        "lr",
        "temperature",
        "projection_width",
        "projection_dim",
        "view_strength",
        "crop_scale_min",
    ),
    "byol": (
        "batch_size",
        "lr",
        "ema_base",
        "projection_width",
        "projection_dim",
        "view_strength",
        "crop_scale_min",
    ),
}
_COMMON_DEFAULTS = {
    "projection_width": 256,
    "projection_dim": 64,
    "view_strength": 1.0,
    "crop_scale_min": 0.2,
}
#: Defaults (docs SSL.md; SimCLR's and BYOL's papers scaled down to small CPU phases).
DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {"batch_size": 32, "lr": 1e-3, "temperature": 0.2, **_COMMON_DEFAULTS},
    "byol": {"batch_size": 32, "lr": 1e-3, "ema_base": 0.99, **_COMMON_DEFAULTS},
}
#: Search space per parameter: `("choice", values)`, `("loguniform", (low, high))` or `("uniform", (low, high))`.
SEARCH_SPACE: dict[str, tuple[str, tuple[Any, ...]]] = {
    # SimCLR wants large batches (more negatives; chance 1/(2B - 1)); BYOL copes with small ones
    "batch_size": ("choice", (16, 32, 64, 128)),
    "lr": ("loguniform", (1e-4, 1e-2)),
    "temperature": ("loguniform", (0.05, 1.0)),  # 0.1-0.5 common; smaller batches prefer larger values
    "projection_width": ("choice", (64, 128, 256, 512)),
    "projection_dim": ("choice", (32, 64, 128)),
    "ema_base": ("uniform", (0.9, 0.999)),  # BYOL: 0.99-0.996; a short phase has few steps to follow
    "view_strength": ("uniform", (0.5, 1.5)),  # colour jitter strength (`views.default_view_params`)
    "crop_scale_min": ("uniform", (0.08, 0.6)),  # crop_scale=(min, 1.0); larger = milder crops
}


def view_params_for(
    image_size: int, view_strength: float = 1.0, crop_scale_min: float = 0.2
) -> dict[str, Any]:
    """The view parameters of the two task parameters: `views.default_view_params(image_size,
    view_strength)` with `crop_scale=(crop_scale_min, 1.0)` (validated)."""
    base = views.default_view_params(image_size, view_strength)
    return views.validate_view_params(image_size, **{**base, "crop_scale": (crop_scale_min, 1.0)})


# ---------------------------------------------------------------------------------------------------------
# losses and schedule
def nt_xent_loss(z1: Any, z2: Any, temperature: Any) -> Any:
    """SimCLR's NT-Xent loss, averaged over the 2B views of a batch (a scalar tensor).

    `z1`, `z2`: `(B, D)` projections of the two views of B images (row i of each is image i); any float
    dtype, computed in float32. Each of the 2B L2-normalised vectors must pick its partner among the 2B - 1
    others by softmax over cosine similarity / `temperature`:
    `loss_i = -log(exp(s(i, p(i)) / t) / sum_{j != i} exp(s(i, j) / t))`. Random directions give about
    `log(2B - 1)`; well-separated pairs (z1 = z2, distinct rows) give about 0.
    """
    z = ops.normalize(ops.cast(ops.concatenate([z1, z2], axis=0), "float32"), axis=1, epsilon=1e-12)
    partner = ops.concatenate([z[ops.shape(z1)[0] :], z[: ops.shape(z1)[0]]], axis=0)
    t = ops.cast(temperature, "float32")
    logits = ops.matmul(z, ops.transpose(z)) / t
    # A view is not its own candidate: a large finite offset (not -inf) keeps gradients finite.
    logits = logits - 1e9 * ops.eye(ops.shape(z)[0], dtype="float32")
    positive = ops.sum(z * partner, axis=1) / t
    return ops.mean(ops.logsumexp(logits, axis=1) - positive)


def byol_loss(p: Any, z: Any) -> Any:
    """BYOL's loss, `2 - 2 cos(p_i, z_i)` averaged over the batch (a scalar tensor in [0, 4]).

    `p`: `(B, D)` online predictions; `z`: `(B, D)` target projections (no gradient flows into `z`). The
    normalised MSE of the BYOL paper: `||p/|p| - z/|z|||^2`.
    """
    pn = ops.normalize(ops.cast(p, "float32"), axis=1, epsilon=1e-12)
    zn = ops.normalize(ops.stop_gradient(ops.cast(z, "float32")), axis=1, epsilon=1e-12)
    return ops.mean(2.0 - 2.0 * ops.sum(pn * zn, axis=1))


def ema_momentum(step: Any, total_steps: Any, base: float) -> Any:
    """BYOL's target momentum at step k of K: `1 - (1 - base) * (cos(pi k / K) + 1) / 2`.

    `base` at k = 0, rising on a cosine to 1 at k = K. Numpy scalars or arrays in, the same out (float64).
    """
    k = np.asarray(step, np.float64)
    return 1.0 - (1.0 - base) * (np.cos(np.pi * k / np.asarray(total_steps, np.float64)) + 1.0) / 2.0


def _ema_momentum_op(step: Any, total_steps: Any, base: Any) -> Any:
    """`ema_momentum` in the graph (float32 tensors)."""
    k = ops.cast(step, "float32")
    return 1.0 - (1.0 - base) * (ops.cos(math.pi * k / ops.cast(total_steps, "float32")) + 1.0) / 2.0


# ---------------------------------------------------------------------------------------------------------
# heads
def build_projector(
    input_dim: int,
    width: int,
    output_dim: int,
    *,
    output_bn: bool,
    seed: int,
    bn_momentum: float = HEAD_BN_MOMENTUM,
    name: str = "projector",
) -> keras.Model:
    """MLP `(N, input_dim)` -> `(N, output_dim)` float32: Dense(width, no bias), BatchNorm, ReLU,
    Dense(output_dim), and with `output_bn` a last BatchNorm without centre (SimCLR's projection head; the
    output Dense then has no bias). BYOL's projector and predictor: `output_bn=False`.

    Kernels from `GlorotUniform(seed)` (one seed per layer, derived from `seed`), so the head's initial
    weights are a function of `seed` alone.
    """
    for label, v in (("input_dim", input_dim), ("width", width), ("output_dim", output_dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: {label} must be an integer >= 1; got {v!r}; use e.g. {label}=128")
    seeds = np.random.default_rng(int(seed)).integers(0, 2**31 - 1, size=2)
    inputs = keras.Input((int(input_dim),), name=f"{name}_in")
    x = layers.Dense(
        int(width),
        use_bias=False,
        kernel_initializer=keras.initializers.GlorotUniform(seed=int(seeds[0])),
        dtype="float32",
        name=f"{name}_dense1",
    )(inputs)
    x = layers.BatchNormalization(momentum=bn_momentum, dtype="float32", name=f"{name}_bn1")(x)
    x = layers.ReLU(dtype="float32", name=f"{name}_relu1")(x)
    x = layers.Dense(
        int(output_dim),
        use_bias=not output_bn,
        kernel_initializer=keras.initializers.GlorotUniform(seed=int(seeds[1])),
        dtype="float32",
        name=f"{name}_dense2",
    )(x)
    if output_bn:
        x = layers.BatchNormalization(
            momentum=bn_momentum, center=False, dtype="float32", name=f"{name}_bn2"
        )(x)
    return keras.Model(inputs, x, name=name)


def build_predictor(dim: int, width: int, *, seed: int, bn_momentum: float = HEAD_BN_MOMENTUM) -> keras.Model:
    """BYOL's predictor: `(N, dim)` -> `(N, dim)`, the projector's MLP shape without output BatchNorm."""
    return build_projector(
        dim, width, dim, output_bn=False, seed=seed, bn_momentum=bn_momentum, name="predictor"
    )


# ---------------------------------------------------------------------------------------------------------
# models with their own steps
class _ContrastiveModel(keras.Model):
    """uint8 views -> `preprocess` -> encoder -> global average pool -> projector (shared by both methods).

    `fit` data: batches `(view1, view2)` uint8 `(B, S, S, 3)`. `predict` data: images; returns `(h, z)`,
    pooled encoder features `(N, C)` and projections `(N, D)` float32, in inference mode.
    """

    def __init__(self, encoder: keras.Model, projector: keras.Model, preprocess: keras.layers.Layer, **kw):
        super().__init__(**kw)
        self.encoder = encoder
        self.projector = projector
        self.preprocess = preprocess
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _pooled(self, encoder: keras.Model, x: Any, training: bool) -> Any:
        h = encoder(self.preprocess(x), training=training)
        return ops.mean(ops.cast(h, "float32"), axis=(1, 2))

    def call(self, x, training=False):
        return self._pooled(self.encoder, x, training)

    def predict_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        h = self._pooled(self.encoder, x, False)
        return h, self.projector(h, training=False)

    def _loss(self, v1: Any, v2: Any, training: bool) -> Any:
        """The method's loss on a batch of view pairs: defined by each method (SimCLRModel, BYOLModel); this
        base class is never trained itself."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss; use SimCLRModel or BYOLModel")

    def _after_step(self) -> None:
        """Called after each optimizer step (BYOL's EMA update)."""

    def train_step(self, data):
        import tensorflow as tf

        v1, v2 = data
        with tf.GradientTape() as tape:
            loss = self._loss(v1, v2, True)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self._after_step()
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        v1, v2 = data
        self.loss_tracker.update_state(self._loss(v1, v2, False))
        return {"loss": self.loss_tracker.result()}


class SimCLRModel(_ContrastiveModel):
    """SimCLR: both views through one encoder pass (BatchNorm over all 2B views), NT-Xent on projections."""

    def __init__(self, encoder, projector, preprocess, temperature: float, **kw):
        super().__init__(encoder, projector, preprocess, **kw)
        self.temperature = keras.Variable(
            float(temperature), trainable=False, dtype="float32", name="temperature"
        )

    def _loss(self, v1, v2, training: bool):
        b = ops.shape(v1)[0]
        z = self.projector(
            self._pooled(self.encoder, ops.concatenate([v1, v2], axis=0), training), training=training
        )
        return nt_xent_loss(z[:b], z[b:], self.temperature)


class BYOLModel(_ContrastiveModel):
    """BYOL: online encoder + projector + predictor, target encoder + projector updated by EMA.

    Trainable: the online network only (the target's variables are non-trainable, changed by the EMA update
    alone; its layers stay trainable, so its BatchNorm uses batch statistics in training, as BYOL's target
    does). `tau` holds the momentum of the last update (for tests and logs).
    """

    def __init__(self, encoder, projector, predictor, preprocess, ema_base: float, total_steps: int, **kw):
        super().__init__(encoder, projector, preprocess, **kw)
        self.predictor = predictor
        self.target_encoder = _clone(encoder, "target_encoder")
        self.target_projector = _clone(projector, "target_projector")
        # EMA pairs: positions in `.weights` (the same order in a clone) of the online trainable weights
        online = encoder.weights + projector.weights
        target = self.target_encoder.weights + self.target_projector.weights
        if [(v.path, tuple(v.shape)) for v in online] != [(v.path, tuple(v.shape)) for v in target]:
            raise ValueError("BYOL target network does not mirror the online network; the clone failed")
        self._ema_index = [i for i, v in enumerate(online) if v.trainable]
        # The optimizer must never touch the target, yet its BatchNorm layers must normalise with batch
        # statistics as the online ones do (BYOL runs both networks in training mode). Freezing the layers
        # (`layer.trainable = False`) would make Keras run their BatchNorm in inference mode, on moving
        # statistics that nothing updates: a target without normalisation, whose projections the predictor
        # matches at a loss near 0 within a few epochs while the features stop improving. So the variables
        # are frozen, not the layers.
        for v in target:
            v.trainable = False
        self.ema_base = keras.Variable(float(ema_base), trainable=False, dtype="float32", name="ema_base")
        self.total_steps = keras.Variable(
            int(total_steps), trainable=False, dtype="int64", name="total_steps"
        )
        self.steps_done = keras.Variable(0, trainable=False, dtype="int64", name="steps_done")
        self.tau = keras.Variable(float(ema_base), trainable=False, dtype="float32", name="tau")

    def _loss(self, v1, v2, training: bool):
        b = ops.shape(v1)[0]
        x = ops.concatenate([v1, v2], axis=0)
        p = self.predictor(
            self.projector(self._pooled(self.encoder, x, training), training=training), training=training
        )
        z = self.target_projector(self._pooled(self.target_encoder, x, training), training=training)
        # prediction of view 1 against the target's view 2, and the other way round
        return 0.5 * (byol_loss(p[:b], z[b:]) + byol_loss(p[b:], z[:b]))

    def _after_step(self) -> None:
        tau = _ema_momentum_op(self.steps_done, self.total_steps, self.ema_base)
        online = self.encoder.weights + self.projector.weights
        target = self.target_encoder.weights + self.target_projector.weights
        for i in self._ema_index:
            target[i].assign(tau * target[i] + (1.0 - tau) * online[i])
        self.tau.assign(tau)
        self.steps_done.assign_add(1)


def _clone(model: keras.Model, name: str) -> keras.Model:
    """A copy of `model` (same layers and config, the same weight values), under the same dtype policies."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.name = name
    return copy


# ---------------------------------------------------------------------------------------------------------
# results
EpochLogs = dict[str, Any]


@dataclass
class ContrastiveResult:
    """Outcome of `train_contrastive`; fields as `study.train.phases.PretextResult` where they overlap.

    `history`: per epoch `{"epoch" (1-based), "loss", "val_loss"}`. `metrics`: `contrastive_scores` on the
    test views (`{}` without test images or after a divergence). `encoder_weights`: the trained encoder's
    `get_weights()` (`[]` when diverged). `examples`: uint8 `(4, S, S, 3)` `images`, `view1`, `view2` of
    the first test images (`{}` without test images). `cost`: `seconds` (wall, the whole call),
    `fit_seconds`, `view_seconds` (making training views, in the background thread), `steps`,
    `images_seen` (steps x batch size), `views_seen` (twice that), `epochs_run`, `flops` (estimated
    training FLOPs, as `study.train.phases.PretextResult.cost` defines them). `timings`: per epoch
    `{"epoch", "fit_s"}`.
    """

    kind: str
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
        """The same outcome as a `study.train.phases.PretextResult` (task = kind; of the cost, `images_seen`
        and `flops`, which `run_pretext` completes with the phase's time and device; timings dropped)."""
        from study.train.phases import PretextResult

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
    kind: str,
    encoder: keras.Model,
    images_train: np.ndarray,
    images_val: np.ndarray,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float = DEFAULTS["simclr"]["temperature"],
    projection_dim: int = DEFAULTS["simclr"]["projection_dim"],
    projection_width: int = DEFAULTS["simclr"]["projection_width"],
    ema_base: float = DEFAULTS["byol"]["ema_base"],
    view_params: dict[str, Any] | None = None,
    on_epoch: Callable[[int, EpochLogs], None] | None = None,
    preprocess: keras.layers.Layer | None = None,
    images_test: np.ndarray | None = None,
    patience: int | None = None,
    head_bn_momentum: float = HEAD_BN_MOMENTUM,
) -> ContrastiveResult:
    """Train `encoder` in place with SimCLR (`kind="simclr"`) or BYOL (`"byol"`); see the module docstring.

    `encoder`: a built `keras.Model` taking preprocessed `(N, S, S, 3)` float input (`models.build_encoder`),
    output `(N, h, w, C)`. `images_train`, `images_val`: uint8 `(N, S, S, 3)` (at least `batch_size`
    training images and 2 validation images). `temperature`: SimCLR only; `ema_base`: BYOL only.
    `view_params`: `study.tasks.views` parameters (missing ones default for S). `preprocess`: the layer that maps
    uint8 images to the encoder's input (default `models.ImagePreprocess`, ResNet50's caffe preprocessing).
    `images_test`: when given, `metrics` are `contrastive_scores` on two test views per image (groups of
    `batch_size`), beside the encoder as it came in. `patience`: Keras `EarlyStopping(val_loss,
    restore_best_weights=True)` when set and > 0 (0 and None: off, as `pretext_patience`). `on_epoch(epoch, logs)`: after each completed epoch (1-based).

    `val_loss` is the same loss on fixed validation views, in inference mode (BatchNorm moving statistics),
    in batches of `min(batch_size, len(images_val))` (remainder left out).
    """
    started = time.perf_counter()
    kind, checked = _check_args(
        kind,
        encoder,
        images_train,
        images_val,
        images_test,
        seed,
        epochs,
        batch_size,
        lr,
        temperature,
        projection_dim,
        projection_width,
        ema_base,
        patience,
        head_bn_momentum,
    )
    size = int(encoder.input.shape[1])
    vp = views.validate_view_params(size, **(view_params or {}))
    x_train, x_val = checked
    preprocess = models.ImagePreprocess(name="preprocess") if preprocess is None else preprocess
    steps = len(x_train) // batch_size
    val_batch = min(batch_size, len(x_val))

    def make_views(epoch: int) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        v1, v2 = views.two_views(x_train, np.random.default_rng([seed, STREAM_VIEWS, epoch]), **vp)
        return v1, v2, time.perf_counter() - t0

    ahead = ThreadPoolExecutor(1, thread_name_prefix="contrastive-views")
    history: list[EpochLogs] = []
    timings: list[dict[str, float]] = []
    view_seconds = 0.0
    try:
        upcoming = ahead.submit(make_views, 0)
        val_views = views.two_views(x_val, np.random.default_rng([seed, STREAM_VAL]), **vp)
        model = _compiled_model(
            kind,
            encoder,
            preprocess,
            seed,
            lr,
            temperature,
            projection_dim,
            projection_width,
            ema_base,
            epochs * steps,
            head_bn_momentum,
        )
        test = None
        if images_test is not None:
            test_views = views.two_views(images_test, np.random.default_rng([seed, STREAM_TEST]), **vp)
            test = (test_views, _predict(model, test_views))  # the encoder as it came in: the reference
        import tensorflow as tf

        val_data = tf.data.Dataset.from_tensor_slices(val_views).batch(val_batch, drop_remainder=True)
        early = (
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
            if patience
            else None
        )
        callbacks = keras.callbacks.CallbackList([early] if early else [], model=model)
        callbacks.on_train_begin()
        diverged_epoch = None
        for epoch in range(epochs):
            v1, v2, made_s = upcoming.result()
            view_seconds += made_s
            if epoch + 1 < epochs:
                upcoming = ahead.submit(make_views, epoch + 1)
            order = np.random.default_rng([seed, STREAM_ORDER, epoch]).permutation(len(v1))[
                : steps * batch_size
            ]
            data = tf.data.Dataset.from_tensor_slices((v1[order], v2[order])).batch(
                batch_size, drop_remainder=True
            )
            t0 = time.perf_counter()
            fit = model.fit(
                data,
                epochs=epoch + 1,
                initial_epoch=epoch,
                shuffle=False,
                verbose=0,
                validation_data=val_data,
            )
            timings.append({"epoch": epoch + 1, "fit_s": time.perf_counter() - t0})
            logs = {
                "epoch": epoch + 1,
                "loss": float(fit.history["loss"][-1]),
                "val_loss": float(fit.history["val_loss"][-1]),
            }
            if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
                diverged_epoch = epoch + 1
                break
            history.append(logs)
            callbacks.on_epoch_end(epoch, dict(logs))
            if on_epoch is not None:
                on_epoch(epoch + 1, dict(logs))
            if model.stop_training:
                break
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)
    epochs_run = len(history) + (diverged_epoch is not None)
    cost = {
        "fit_seconds": float(sum(t["fit_s"] for t in timings)),
        "view_seconds": float(view_seconds),
        "steps": float(epochs_run * steps),
        "images_seen": float(epochs_run * steps * batch_size),
        "views_seen": float(2 * epochs_run * steps * batch_size),
        "epochs_run": float(epochs_run),
    }
    # Each view trains the online encoder (3 forward passes' worth); BYOL's target also encodes every view.
    passes = models.TRAIN_FLOPS_FACTOR + (1 if kind == "byol" else 0)
    cost["flops"] = float(models.forward_flops(encoder) * passes * cost["views_seen"])
    if diverged_epoch is not None:
        cost["seconds"] = time.perf_counter() - started
        return ContrastiveResult(kind, history, {}, [], True, diverged_epoch, cost=cost, timings=timings)
    callbacks.on_train_end()  # EarlyStopping puts the best epoch's weights back here
    stopped = early.stopped_epoch + 1 if early is not None and early.stopped_epoch > 0 else None
    metrics: dict[str, Any] = {}
    examples: dict[str, np.ndarray] = {}
    if test is not None:
        (t1, t2), initial = test
        final = _predict(model, (t1, t2))
        if not all(np.all(np.isfinite(a)) for a in final):
            cost["seconds"] = time.perf_counter() - started
            return ContrastiveResult(
                kind, history, {}, [], True, len(history), stopped, cost=cost, timings=timings
            )
        metrics = contrastive_scores(final[0], final[1], initial[0], initial[1], group_size=batch_size)
        proj = contrastive_scores(final[2], final[3], group_size=batch_size)
        metrics["proj_top1"] = proj["top1"]
        n = min(4, len(t1))
        examples = {"images": np.asarray(images_test[:n]), "view1": t1[:n], "view2": t2[:n]}
    encoder.set_weights(model.encoder.get_weights())
    cost["seconds"] = time.perf_counter() - started
    return ContrastiveResult(
        kind,
        history,
        metrics,
        encoder.get_weights(),
        stopped_epoch=stopped,
        examples=examples,
        cost=cost,
        timings=timings,
    )


def _compiled_model(
    kind,
    encoder,
    preprocess,
    seed,
    lr,
    temperature,
    projection_dim,
    projection_width,
    ema_base,
    total_steps,
    head_bn_momentum,
) -> _ContrastiveModel:
    """The phase's compiled model, through `study.train.model_cache` (key: everything the traced steps depend on
    apart from shapes, the optimizer and the variables)."""
    online = _clone(encoder, "online_encoder")
    channels = int(online.output.shape[-1])
    seeds = np.random.default_rng([seed, STREAM_INIT]).integers(0, 2**31 - 1, size=2)
    projector = build_projector(
        channels,
        projection_width,
        projection_dim,
        output_bn=kind == "simclr",
        seed=int(seeds[0]),
        bn_momentum=head_bn_momentum,
    )
    if kind == "simclr":
        fresh: _ContrastiveModel = SimCLRModel(online, projector, preprocess, temperature, name="simclr")
    else:
        predictor = build_predictor(
            projection_dim, projection_width, seed=int(seeds[1]), bn_momentum=head_bn_momentum
        )
        fresh = BYOLModel(online, projector, predictor, preprocess, ema_base, total_steps, name="byol")
    fresh.built = True
    arch = hashlib.sha256(
        (
            encoder.to_json() + projector.to_json() + repr(keras.saving.serialize_keras_object(preprocess))
        ).encode()
    ).hexdigest()
    key = ("contrastive", kind, arch, float(head_bn_momentum))
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
    kind,
    encoder,
    images_train,
    images_val,
    images_test,
    seed,
    epochs,
    batch_size,
    lr,
    temperature,
    projection_dim,
    projection_width,
    ema_base,
    patience,
    head_bn_momentum,
):
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not known; use one of {KINDS}")
    if not isinstance(encoder, keras.Model) or len(encoder.input.shape) != 4:
        raise ValueError(
            "encoder must be a built keras.Model on (N, S, S, 3) input; use models.build_encoder"
        )
    size = int(encoder.input.shape[1])
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
    for name, v, low in (("epochs", epochs, 1), ("batch_size", batch_size, 2), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {v!r}; use e.g. {name}={max(low, 4)}")
    for name, v in (("projection_dim", projection_dim), ("projection_width", projection_width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(
                f"{name} must be an integer >= 1; got {v!r}; use e.g. {name}={DEFAULTS[kind][name]}"
            )
    if len(arrays[0]) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {len(arrays[0])} training images (every batch has "
            f"exactly batch_size images); use batch_size <= {len(arrays[0])}"
        )
    if len(arrays[1]) < 2:
        raise ValueError(
            f"images_val holds {len(arrays[1])} image(s); the validation loss needs at least 2 (one pair of "
            "images per batch); use a larger validation split"
        )
    for name, v, ok, fix in (
        ("lr", lr, lambda a: a > 0, "lr=1e-3"),
        ("temperature", temperature, lambda a: a > 0, "temperature=0.2"),
        ("ema_base", ema_base, lambda a: 0 <= a < 1, "ema_base=0.99"),
        ("head_bn_momentum", head_bn_momentum, lambda a: 0 <= a < 1, f"head_bn_momentum={HEAD_BN_MOMENTUM}"),
    ):
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
    return kind, (arrays[0], arrays[1])


# ---------------------------------------------------------------------------------------------------------
# did it learn? (pure numpy)
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of float `(N, D)` scaled to unit length (a zero row stays zero); float64 `(N, D)`."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def contrastive_hits(e1: np.ndarray, e2: np.ndarray, group_size: int | None = None) -> np.ndarray:
    """Whether each view finds its positive: bool `(2M,)`, views 1 of the M scored images then views 2.

    `e1`, `e2`: embeddings `(N, D)` of the two views of N images (row i of each is image i). Images are
    scored in consecutive groups of `group_size` (None: one group of all N); with N >= `group_size`, the
    last N mod `group_size` images are left out (M = N - N mod G), so every anchor has the same 2G - 1
    candidates; with N < `group_size`, one group of all N. Anchor a hits when the cosine similarity to
    its positive is strictly larger than to every other view of its group (a tie is a miss, so a collapsed
    embedding scores 0, not chance).
    """
    a, b = np.asarray(e1, np.float64), np.asarray(e2, np.float64)
    if a.ndim != 2 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"e1 and e2 must be (N, D) arrays of the same shape with N >= 2; got {a.shape} and {b.shape}"
        )
    n = len(a)
    g = n if group_size is None or group_size > n else int(group_size)
    if g < 2:
        raise ValueError(f"group_size must be >= 2; got {group_size!r}; use e.g. the training batch size")
    m = n - n % g
    hits1, hits2 = [], []
    for start in range(0, m, g):
        z = l2_normalize(np.concatenate([a[start : start + g], b[start : start + g]]))
        sim = z @ z.T
        np.fill_diagonal(sim, -np.inf)
        partner = np.concatenate([np.arange(g, 2 * g), np.arange(g)])
        pos = sim[np.arange(2 * g), partner]
        sim[np.arange(2 * g), partner] = -np.inf
        hit = pos > sim.max(axis=1)
        hits1.append(hit[:g])
        hits2.append(hit[g:])
    return np.concatenate(hits1 + hits2)


def alignment(e1: np.ndarray, e2: np.ndarray, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment `E ||f(x) - f(y)||^alpha` over positive pairs, on L2-normalised rows of
    `e1`, `e2` `(N, D)` (0 = the two views coincide; 4 = opposite; lower is better)."""
    d = l2_normalize(e1) - l2_normalize(e2)
    return float(np.mean(np.linalg.norm(d, axis=1) ** alpha))


def uniformity(e: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola's uniformity `log E exp(-t ||f(x) - f(y)||^2)` over all pairs of distinct rows of
    `e (N, D)`, L2-normalised (0 = all equal, the worst; about -2t for spread-out points in high dimension;
    lower is better). `scipy.spatial.distance.pdist` for the pair distances; `scipy.special.logsumexp`."""
    from scipy.spatial.distance import pdist
    from scipy.special import logsumexp

    d2 = pdist(l2_normalize(e), "sqeuclidean")
    return float(logsumexp(-t * d2) - math.log(len(d2)))


def contrastive_scores(
    e1: np.ndarray,
    e2: np.ndarray,
    init1: np.ndarray | None = None,
    init2: np.ndarray | None = None,
    *,
    group_size: int | None = None,
    alpha: float = LEARNED_ALPHA,
) -> dict[str, Any]:
    """Did the encoder learn? Metrics of two views' embeddings beside learning-free references.

    `e1`, `e2`: `(N, D)` embeddings of the two views of N test images after training; `init1`, `init2`:
    the same views through the encoder before training (optional; `(N, D')`). `group_size`: see
    `contrastive_hits` (the training batch size makes chance 1/(2B - 1)).

    Returns, shaped as `study.tasks.references.pretext_scores` (floats unless noted): `top1` (hits over all 2M
    anchors), `align`, `uniform` (mean of both views' uniformity); references `ref_chance_top1` =
    1/(2G - 1) and, with `init*`, `ref_initial_top1`, `ref_initial_align`, `ref_initial_uniform`; best
    reference per metric `ref_top1` (the higher of chance and initial), `ref_align`, `ref_uniform`
    (initial); `headline` (str, "top1"), `ref_name` (str, "chance" or "initial"), `ratio` (top1 / ref_top1),
    `learned_p`, `learned` (bool), `n_images` (M), `group_size` (G).

    `learned`: `top1` beats the best reference and a one-sided exact test says so at `alpha` on the M
    view-1 anchors (one per image: the two anchors of a pair are not independent): against chance
    `scipy.stats.binomtest(hits, M, 1/(2G - 1), "greater")`; against the initial encoder the exact
    McNemar test on the images where the two disagree (`binomtest(model-only hits, discordant, 0.5,
    "greater")`). Alignment and uniformity have no verdict (alignment alone is perfect for a collapsed
    encoder; uniformity alone for a random one).
    """
    from scipy.stats import binomtest

    hits = contrastive_hits(e1, e2, group_size)
    m = len(hits) // 2
    n = len(np.asarray(e1))
    g = n if group_size is None or group_size > n else int(group_size)
    chance = 1.0 / (2 * g - 1)
    scores: dict[str, Any] = {
        "top1": float(hits.mean()),
        "align": alignment(e1, e2),
        "uniform": 0.5 * (uniformity(e1) + uniformity(e2)),
        "ref_chance_top1": chance,
    }
    refs = {"chance": chance}
    p_values = {"chance": float(binomtest(int(hits[:m].sum()), m, chance, alternative="greater").pvalue)}
    if init1 is not None and init2 is not None:
        init_hits = contrastive_hits(init1, init2, group_size)
        scores["ref_initial_top1"] = float(init_hits.mean())
        scores["ref_initial_align"] = alignment(init1, init2)
        scores["ref_initial_uniform"] = 0.5 * (uniformity(init1) + uniformity(init2))
        scores["ref_align"] = scores["ref_initial_align"]
        scores["ref_uniform"] = scores["ref_initial_uniform"]
        refs["initial"] = scores["ref_initial_top1"]
        only_model = int(np.sum(hits[:m] & ~init_hits[:m]))
        discordant = only_model + int(np.sum(~hits[:m] & init_hits[:m]))
        p_values["initial"] = (
            float(binomtest(only_model, discordant, 0.5, alternative="greater").pvalue) if discordant else 1.0
        )
    best = max(refs, key=lambda k: (refs[k], k == "initial"))  # the initial encoder wins a tie with chance
    scores.update(
        headline="top1",
        ref_top1=refs[best],
        ref_name=best,
        ratio=scores["top1"] / refs[best] if refs[best] else float("nan"),
        learned_p=p_values[best],
        n_images=float(m),
        group_size=float(g),
    )
    scores["learned"] = bool(scores["top1"] > refs[best] and p_values[best] < alpha)
    return scores
