"""The two-view methods' pieces in Keras: losses, the EMA schedule, projection and prediction heads, and the
models whose `train_step` is the method's own. `study.train.contrastive` trains them.

Which pieces a task gets follows from what it declares (`study.tasks.steps.TwoViewStep`), never from its name:
- loss `nt_xent` (SimCLR, Chen et al. 2020; `NtXentModel`): the 2B views of a batch (two per image) go
  through the encoder in one pass (BatchNorm sees all 2B, SimCLR's "global BN" on one device), global
  average pooling and a projection MLP (`build_projector`: Dense, BN, ReLU, Dense, and with `projector_bn`
  a BN without centre, as SimCLR's code); loss `nt_xent_loss` with temperature over the 2B - 1 other views.
- loss `normalized_mse` with a predictor and an EMA target (BYOL, Grill et al. 2020; `EmaTargetModel`):
  online network (encoder, projector, predictor) and a target network (encoder, projector: a clone,
  initialised to the online weights) whose trainable weights follow the online ones by an exponential moving
  average after every step, `target <- tau_k target + (1 - tau_k) online`, with `tau_k = ema_momentum(k, K,
  ema_base)` rising from `ema_base` to 1 on a cosine schedule over the K steps of the phase. Loss
  `normalized_mse_loss(online prediction of view 1, target projection of view 2)`, symmetrised (the mean of
  both directions, so it lies in [0, 4]). The target runs in training mode (batch statistics), as in BYOL;
  its BatchNorm moving statistics follow its own batches.

Temperature, EMA base and step count are variables, so one traced model serves every value.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from study.train import backend

#: BatchNorm momentum of the projector and predictor (Keras' 0.99 is too slow for short phases, SSL.md).
HEAD_BN_MOMENTUM = 0.9


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


def normalized_mse_loss(p: Any, z: Any) -> Any:
    """The `normalized_mse` loss (BYOL's), `2 - 2 cos(p_i, z_i)` averaged over the batch (a scalar tensor
    in [0, 4]).

    `p`: `(B, D)` online predictions; `z`: `(B, D)` target projections (no gradient flows into `z`). The
    normalised MSE of the BYOL paper: `||p/|p| - z/|z|||^2`.
    """
    pn = ops.normalize(ops.cast(p, "float32"), axis=1, epsilon=1e-12)
    zn = ops.normalize(ops.stop_gradient(ops.cast(z, "float32")), axis=1, epsilon=1e-12)
    return ops.mean(2.0 - 2.0 * ops.sum(pn * zn, axis=1))


def ema_momentum(step: Any, total_steps: Any, base: float) -> Any:
    """The EMA target's momentum at step k of K (BYOL's schedule): `1 - (1 - base) * (cos(pi k / K) + 1) / 2`.

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
    """The predictor (BYOL's): `(N, dim)` -> `(N, dim)`, the projector's MLP without output BatchNorm."""
    return build_projector(
        dim, width, dim, output_bn=False, seed=seed, bn_momentum=bn_momentum, name="predictor"
    )


# ---------------------------------------------------------------------------------------------------------
# models with their own steps
class _ContrastiveModel(keras.Model):
    """uint8 views -> `preprocess` -> encoder -> global average pool -> projector (shared by both methods).

    `fit` data: batches `(view1, view2)` uint8 `(B, S, S, 3)`. `predict` data: images; returns `(h, z)`,
    pooled encoder features `(N, C)` and projections `(N, D)` float32, in inference mode (as `call`).
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
        h = self._pooled(self.encoder, x, training)
        return h, self.projector(h, training=training)

    def _loss(self, v1: Any, v2: Any, training: bool) -> Any:
        """The method's loss on a batch of view pairs: defined by each method (NtXentModel, EmaTargetModel);
        this base class is never trained itself."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss; use NtXentModel or EmaTargetModel")

    def _after_step(self) -> None:
        """Called after each optimizer step (the EMA target's update)."""

    # The steps, one small one per backend (`_STEPS`): JAX's are stateless (state in, state out).
    def train_step(self, *args):
        return _STEPS[backend.name()][0](self, *args)

    def test_step(self, *args):
        return _STEPS[backend.name()][1](self, *args)

    def predict_step(self, *args):
        if backend.name() == "jax":  # Keras' stateless predict step runs `call`
            return super().predict_step(*args)
        data = args[0]
        x = data[0] if isinstance(data, (tuple, list)) else data
        h = self._pooled(self.encoder, x, False)
        return h, self.projector(h, training=False)


def _stateful_train_step(model: _ContrastiveModel, data: Any) -> dict[str, Any]:
    """TensorFlow's and PyTorch's step: the loss, its gradients and the optimizer's step in place
    (`backend.optimizer_step`), then `_after_step` on the updated weights."""
    v1, v2 = data
    loss = backend.optimizer_step(
        lambda: model._loss(v1, v2, True), model.trainable_variables, model.optimizer
    )
    model._after_step()
    model.loss_tracker.update_state(loss)
    return {"loss": model.loss_tracker.result()}


def _stateful_test_step(model: _ContrastiveModel, data: Any) -> dict[str, Any]:
    v1, v2 = data
    model.loss_tracker.update_state(model._loss(v1, v2, False))
    return {"loss": model.loss_tracker.result()}


def _scope(model: _ContrastiveModel, trainable: list, non_trainable: list) -> keras.StatelessScope:
    """Keras' variables of `model` reading the given values; what is assigned is kept in the scope."""
    mapping = list(zip(model.trainable_variables, trainable)) + list(
        zip(model.non_trainable_variables, non_trainable)
    )
    return keras.StatelessScope(state_mapping=mapping)


def _values(scope: keras.StatelessScope, variables: list) -> list:
    return [scope.get_current_value(v) for v in variables]


def _jax_tracked(model: _ContrastiveModel, metric_values: list, loss: Any) -> tuple[dict, list]:
    """The loss tracker updated with `loss`, statelessly: (logs, new metric values)."""
    with keras.StatelessScope(state_mapping=list(zip(model.metrics_variables, metric_values))) as scope:
        model.loss_tracker.update_state(loss)
        logs = {"loss": model.loss_tracker.result()}
    return logs, _values(scope, model.metrics_variables)


def _jax_train_step(model: _ContrastiveModel, state: tuple, data: Any) -> tuple[dict, tuple]:
    """The TensorFlow step's computation in JAX's stateless form: loss and its gradients (BatchNorm updates
    carried out of the gradient as aux), the optimizer's step, then `_after_step` on the updated weights."""
    trainable, non_trainable, optimizer_values, metric_values = state
    v1, v2 = data

    def loss_and_updates(trainable, non_trainable):
        with _scope(model, trainable, non_trainable) as scope:
            loss = model._loss(v1, v2, True)
        return loss, _values(scope, model.non_trainable_variables)

    gradients = backend.value_and_grad(loss_and_updates, has_aux=True)
    (loss, non_trainable), grads = gradients(trainable, non_trainable)
    trainable, optimizer_values = model.optimizer.stateless_apply(optimizer_values, grads, trainable)
    with _scope(model, trainable, non_trainable) as scope:
        model._after_step()
    non_trainable = _values(scope, model.non_trainable_variables)
    logs, metric_values = _jax_tracked(model, metric_values, loss)
    return logs, (trainable, non_trainable, optimizer_values, metric_values)


def _jax_test_step(model: _ContrastiveModel, state: tuple, data: Any) -> tuple[dict, tuple]:
    trainable, non_trainable, metric_values = state
    v1, v2 = data
    with _scope(model, trainable, non_trainable) as scope:
        loss = model._loss(v1, v2, False)
    non_trainable = _values(scope, model.non_trainable_variables)
    logs, metric_values = _jax_tracked(model, metric_values, loss)
    return logs, (trainable, non_trainable, metric_values)


#: (train step, test step) per backend.
_STEPS = {
    "tensorflow": (_stateful_train_step, _stateful_test_step),
    "jax": (_jax_train_step, _jax_test_step),
    "torch": (_stateful_train_step, _stateful_test_step),
}


class NtXentModel(_ContrastiveModel):
    """The `nt_xent` method (SimCLR's): both views through one encoder pass (BatchNorm over all 2B views),
    NT-Xent on the projections."""

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


class EmaTargetModel(_ContrastiveModel):
    """The `normalized_mse` method with a predictor and an EMA target (BYOL's): online encoder + projector +
    predictor, target encoder + projector updated by EMA.

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
            raise ValueError("the EMA target network does not mirror the online network; the clone failed")
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
        # JAX computes in 32 bits unless told otherwise (its int64 would be int32 with a warning)
        counter = "int64" if backend.name() == "tensorflow" else "int32"
        self.total_steps = keras.Variable(
            int(total_steps), trainable=False, dtype=counter, name="total_steps"
        )
        self.steps_done = keras.Variable(0, trainable=False, dtype=counter, name="steps_done")
        self.tau = keras.Variable(float(ema_base), trainable=False, dtype="float32", name="tau")

    def _loss(self, v1, v2, training: bool):
        b = ops.shape(v1)[0]
        x = ops.concatenate([v1, v2], axis=0)
        p = self.predictor(
            self.projector(self._pooled(self.encoder, x, training), training=training), training=training
        )
        z = self.target_projector(self._pooled(self.target_encoder, x, training), training=training)
        # prediction of view 1 against the target's view 2, and the other way round
        return 0.5 * (normalized_mse_loss(p[:b], z[b:]) + normalized_mse_loss(p[b:], z[:b]))

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
