"""Compiled Keras models kept across the trials of one worker process, so a reused worker does not re-trace.

With `TuneConfig(reuse_actors=True)` one process runs many trials, and most of them build a model of an
architecture it has trained before. Tracing a new model's train, test and predict functions costs seconds
(~7.7 s per demo trial, more than its training steps), so a phase asks `compiled(key, fresh, ...)` for its
model:

- the first time a key is seen, `fresh` is compiled and remembered;
- afterwards the remembered model is returned, after every one of its variables (weights, BatchNorm
  statistics, dropout seed states) was given `fresh`'s value and every optimizer variable the value of a
  new optimizer's (iteration 0, the trial's learning rate, zero moments).

The phase still builds `fresh` itself, after reseeding, so the random number streams run exactly as without
the cache, and the remembered model starts in exactly the state `fresh` would have started in: results are
bitwise identical with and without the cache (tests/test_model_cache.py, tests/test_reuse.py). Its traced
functions read variables, never captured values, so the new values are what they compute with.

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
since the last clear (fresh weights and optimizer slots) pass `CLEAR_KERNELS_AFTER`: for the demo's small
encoder about every 15 phases, for ResNet50 every phase (where seconds do not matter).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
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
    # the fresh model's variables, and the slots of a new optimizer (Adam: two per trainable variable)
    _created_values += sum(int(np.prod(v.shape)) for v in fresh.variables)
    _created_values += 2 * sum(int(np.prod(v.shape)) for v in fresh.trainable_variables)
    capacity = size()
    kept = _MODELS.pop(key, None)
    optimizer = make_optimizer()
    if kept is not None and capacity > 0 and _reusable(kept, fresh, optimizer):
        for var, value in zip(kept.variables, fresh.variables):
            var.assign(value)
        for var, value in zip(kept.optimizer.variables, optimizer.variables):
            var.assign(value)
        kept.stop_training = False
        _MODELS[key] = kept  # most recently used last
        stats["hits"] += 1
        return kept
    if optimizer.built:  # `_reusable` built it on the kept model's variables
        optimizer = make_optimizer()
    fresh.compile(optimizer=optimizer, loss=loss)
    stats["misses"] += 1
    if capacity > 0:
        _MODELS[key] = fresh
        while len(_MODELS) > capacity:
            _MODELS.popitem(last=False)
    return fresh


def _reusable(kept: keras.Model, fresh: keras.Model, optimizer: keras.optimizers.Optimizer) -> bool:
    """Same variables (count, shapes, dtypes) and an optimizer that differs at most in its learning rate
    (a variable; the other hyperparameters are constants of the traced graph). Builds `optimizer` on the
    kept model's trainable variables, so its fresh state (iteration 0, zero moments) can be copied."""
    if not _same_layout(kept.variables, fresh.variables) or type(kept.optimizer) is not type(optimizer):
        return False
    ignore = ("learning_rate", "name")
    old_cfg = {k: v for k, v in kept.optimizer.get_config().items() if k not in ignore}
    new_cfg = {k: v for k, v in optimizer.get_config().items() if k not in ignore}
    if old_cfg != new_cfg:
        return False
    if not kept.optimizer.built:
        kept.optimizer.build(kept.trainable_variables)
    optimizer.build(kept.trainable_variables)
    return _same_layout(kept.optimizer.variables, optimizer.variables)


def _same_layout(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype for x, y in zip(a, b)
    )
