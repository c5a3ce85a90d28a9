"""Compiled Keras models kept across the trials of one worker process, so a reused worker does not re-trace.

With `TuneConfig(reuse_actors=True)` one process runs many trials, and most of them build a model of an
architecture it has trained before. Tracing a new model's train, test and predict functions costs seconds
(~3-4 s per model of the demo, a third of a demo trial), so a phase asks `compiled(key, fresh, ...)` for its
model:

- the first time a key is seen, `fresh` is compiled and remembered;
- afterwards the remembered model is returned, after every one of its variables (weights, BatchNorm
  statistics, dropout seed states) was given `fresh`'s value and every optimizer variable the value of a
  new optimizer's (iteration 0, the trial's learning rate, zero moments: the slots as they were when the
  model was first compiled, kept as constants).

The phase still builds `fresh` itself, after reseeding, so the random number streams run exactly as without
the cache, and the remembered model starts in exactly the state `fresh` would have started in: results are
bitwise identical with and without the cache (tests/test_model_cache.py, tests/test_training.py). Its traced
functions read variables, never captured values, so the new values are what they compute with. When a model
is remembered, `fresh` is built inside `building(key)`: its layers are constructed (drawing their
initializers' seeds) but its variables are never created, only their initial values computed (~0.2 s less
per demo phase, and nothing left for the garbage collector).

A model compiled here has its optimizer built at once: Keras would otherwise create the optimizer's slots
inside the first trace of the train step, which makes TensorFlow trace that function twice (~2.5 s of a
demo model's ~3.5 s first use).

One trial at a time uses a process's models: Ray Tune reuses a worker for the next trial only after the
previous trial's thread has ended (`FunctionTrainable.reset_config` refuses otherwise and Tune starts a new
worker), and the pretext input thread of `training.run_pretext` touches no model.

`STUDY_MODEL_CACHE` sets how many models a process keeps (default 4, least recently used dropped first;
0 turns the cache off). The key must name everything that changes the traced graph apart from input shapes
(TensorFlow re-traces by itself for new shapes) and the optimizer (checked here: same type, same settings
but the learning rate): architecture, loss, precision. The phases build it from the `TrialConfig` fields
tagged `config.MODEL`, the head and the loss (`training._model_key`), so a new setting that changes the graph
is tagged once and enters the key.

Memory: TensorFlow (2.21) keeps an eager kernel for every Keras variable ever created, holding ~3x the
variable's bytes, until its kernel cache is cleared; Keras' `clear_session` and `tf.random.set_seed` clear it,
but that also drops the instantiated functions of remembered models (~0.8 s to rebuild per model, per
phase). So phases no longer call them; instead `trim_kernel_cache()` clears the cache once the values created
since the last clear (the fresh weights that were created, a new model's optimizer slots) pass
`CLEAR_KERNELS_AFTER`: for the demo's small encoder about every 15 phases, for ResNet50 every phase (where
seconds do not matter).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import keras
import numpy as np

DEFAULT_SIZE = 4
#: Values (float32 weights and optimizer slots) created before a phase clears TensorFlow's kernel cache.
CLEAR_KERNELS_AFTER = 5_000_000
_created_values = 0
_MODELS: OrderedDict[Hashable, keras.Model] = OrderedDict()
# Counters for tests and benchmarks: how often a phase got a remembered model or compiled a new one.
stats = {"hits": 0, "misses": 0}


def size() -> int:
    """How many compiled models a process keeps, from `STUDY_MODEL_CACHE` (default 4, 0 = off)."""
    raw = os.environ.get("STUDY_MODEL_CACHE", str(DEFAULT_SIZE))
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"STUDY_MODEL_CACHE={raw!r}: use a whole number of models >= 0 (0 turns reuse off)")
    return n


def trim_kernel_cache() -> bool:
    """Clear TensorFlow's eager kernel cache when enough variables were created since the last clear (see
    the module docstring). Returns whether it cleared. Call between phases, never during training."""
    global _created_values
    if _created_values < CLEAR_KERNELS_AFTER:
        return False
    from tensorflow.python.eager import context  # what keras.backend.clear_session calls

    context.context().clear_kernel_cache()
    _created_values = 0
    return True


def clear() -> None:
    """Forget every remembered model (and reset the counters)."""
    _MODELS.clear()
    stats.update(hits=0, misses=0)


@contextlib.contextmanager
def building(key: Hashable, deferrable: bool = True) -> Iterator[None]:
    """Build a phase's fresh model for `compiled(key, ...)` inside this.

    When a model is remembered under `key` (and `deferrable`: the fresh values come from the layers'
    initializers alone, no weights file is read into them), the fresh model's variables are not created:
    Keras defers them (`keras.StatelessScope(initialize_variables=False)`) and `compiled` gives the
    remembered model the values their initializers compute, the values creating them would have held
    (Keras' initializers are seeded when a layer is constructed, so the construction still draws Python's
    `random` exactly as a normal build). Creating a TensorFlow variable costs ~2 ms and leaves a cached
    kernel behind; a demo phase creates ~150. Anything else that must run on the fresh model's values
    (pretext weights) is assigned to the model `compiled` returns.
    """
    if not deferrable or size() == 0 or key not in _MODELS:
        yield
        return
    # Keras registers deferred variables and creates them when the next top-level StatelessScope exits;
    # these are never to be created (the registry is Keras' global state, as in `training._fresh_keras_state`).
    from keras.src.backend.common import global_state

    registered = list(global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True))
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute("uninitialized_variables", registered)


def _is_deferred(var: Any) -> bool:
    """Whether `var` was created inside `building`'s scope and holds no value yet."""
    return getattr(var, "_initializer", None) is not None and getattr(var, "_value", 0) is None


def compiled(
    key: Hashable,
    fresh: keras.Model,
    make_optimizer: Callable[[], keras.optimizers.Optimizer],
    loss: Any,
) -> keras.Model:
    """A compiled model in the state `fresh.compile(make_optimizer(), loss)` would start in.

    Either `fresh` itself, compiled (and remembered under `key`), or the model remembered under `key` with
    `fresh`'s variable values and a fresh optimizer's state. A remembered model whose variables do not
    match `fresh`'s (same count, shapes and dtypes) is dropped and `fresh` used: a wrong key never trains
    the wrong architecture.
    """
    global _created_values
    deferred = [_is_deferred(v) for v in fresh.variables]
    # the variables of the fresh model that were created (not deferred by `building`)
    _created_values += sum(int(np.prod(v.shape)) for v, d in zip(fresh.variables, deferred) if not d)
    capacity = size()
    kept = _MODELS.pop(key, None)
    optimizer = make_optimizer()
    if kept is not None and capacity > 0 and _reusable(kept, fresh, optimizer):
        for var, value, d in zip(kept.variables, fresh.variables, deferred):
            # a deferred variable's value: what creating it would have computed (Keras' `_deferred_initialize`)
            var.assign(value._initializer(value.shape, dtype=value.dtype) if d else value)
        _reset_optimizer(kept.optimizer, optimizer)
        kept.stop_training = False
        _MODELS[key] = kept  # most recently used last
        stats["hits"] += 1
        return kept
    for var, d in zip(fresh.variables, deferred):
        if d:  # built for a remembered model that did not fit after all: create them now, same values
            var._deferred_initialize()
            _created_values += int(np.prod(var.shape))
    fresh.compile(optimizer=optimizer, loss=loss)
    # Keras (without a distribution strategy) creates the optimizer's slots inside the first trace of the
    # train step, and TensorFlow then traces that function a second time (~2.5 s for the demo's models).
    # Built here, eagerly, on the same variables in the same order, the slots hold the same zeros.
    fresh.optimizer.build(fresh.trainable_variables)
    _created_values += sum(int(np.prod(v.shape)) for v in _slots(fresh.optimizer))
    _INITIAL_SLOTS[fresh.optimizer] = [_initial_value(v) for v in _slots(fresh.optimizer)]
    stats["misses"] += 1
    if capacity > 0:
        _MODELS[key] = fresh
        while len(_MODELS) > capacity:
            _MODELS.popitem(last=False)
    return fresh


# A built optimizer's slot variables (those `build` creates: Adam's moments) as they started, per remembered
# model's optimizer: a constant (zeros, or an initial accumulator value) or, in general, the array.
_INITIAL_SLOTS: "weakref.WeakKeyDictionary[Any, list[Any]]" = weakref.WeakKeyDictionary()


def _slots(optimizer: keras.optimizers.Optimizer) -> list:
    """The variables `build` added (an unbuilt Keras optimizer holds only its iteration count and learning
    rate, which come first)."""
    return optimizer.variables[2:]


def _initial_value(var: Any) -> Any:
    value = np.asarray(var)
    flat = value.reshape(-1)
    return flat[0].item() if flat.size and np.all(flat == flat[0]) else value


def _reset_optimizer(kept: keras.optimizers.Optimizer, new: keras.optimizers.Optimizer) -> None:
    """Put `kept` (built) in the state of `new` (same type and settings, not built) after a `build`: the
    iteration count and learning rate from `new`, every slot as it started."""
    for var, value in zip(kept.variables[:2], new.variables):
        var.assign(value)
    for var, value in zip(_slots(kept), _INITIAL_SLOTS[kept]):
        var.assign(np.full(var.shape, value, var.dtype) if np.isscalar(value) else value)


def _reusable(kept: keras.Model, fresh: keras.Model, optimizer: keras.optimizers.Optimizer) -> bool:
    """Same variables (count, shapes, dtypes) and an optimizer that differs at most in its learning rate
    (a variable; the other hyperparameters are constants of the traced graph)."""
    if not _same_layout(kept.variables, fresh.variables) or type(kept.optimizer) is not type(optimizer):
        return False
    if kept.optimizer not in _INITIAL_SLOTS:
        return False
    if [v.name for v in optimizer.variables] != [v.name for v in kept.optimizer.variables[:2]]:
        return False  # an optimizer whose unbuilt state is not (iteration, learning rate)
    ignore = ("learning_rate", "name")
    old_cfg = {k: v for k, v in kept.optimizer.get_config().items() if k not in ignore}
    new_cfg = {k: v for k, v in optimizer.get_config().items() if k not in ignore}
    return old_cfg == new_cfg


def _same_layout(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype for x, y in zip(a, b)
    )
