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
bitwise identical with and without the cache (tests/train/test_model_cache.py, tests/train/test_training.py).
Its traced functions read variables, never captured values, so the new values are what they compute with.
When a model is remembered, `fresh` is built inside `building(key)`: its layers are constructed (drawing their
initializers' seeds) but its variables are never created, only their initial values computed (~0.2 s less
per demo phase, and nothing left for the garbage collector). `obtain(key, build, ...)` goes one step further:
the first such build records how the fresh values follow from Python's `random` (how many seeds the layers
draw, which initializer gets which); once replaying that record has given the values of two builds made from
different states of `random`, and left `random` where they left it, the phase's layers are no longer
constructed at all (~0.1 s less per demo phase): the seeds are drawn as construction would draw them and the
initializers run with them.

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
tagged `config.MODEL`, the head and the loss (`models.model_key`), so a new setting that changes the graph
is tagged once and enters the key.

Memory: TensorFlow (2.21) keeps an eager kernel for every Keras variable ever created, holding ~3x the
variable's bytes, until its kernel cache is cleared; Keras' `clear_session` and `tf.random.set_seed` clear it,
but that also drops the instantiated functions of remembered models (~0.8 s to rebuild per model, per
phase). So phases no longer call them; instead `backend.trim_kernel_cache()` clears the cache once the values
created since the last clear (the fresh weights that were created, a new model's optimizer slots) pass
`CLEAR_KERNELS_AFTER`: for the demo's small encoder about every 15 phases, for ResNet50 every phase (where
seconds do not matter).
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
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
# How many replay plans were verified, and how many hits of `obtain` replayed one instead of building.
replays = {"plans": 0, "builds_skipped": 0}


def size() -> int:
    """How many compiled models a process keeps, from `STUDY_MODEL_CACHE` (default 4, 0 = off)."""
    raw = os.environ.get("STUDY_MODEL_CACHE", str(DEFAULT_SIZE))
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"STUDY_MODEL_CACHE={raw!r}: use a whole number of models >= 0 (0 turns reuse off)")
    # PyTorch runs eagerly (nothing to re-trace), and a remembered model did not train bit for bit like a
    # new one there: off.
    return 0 if keras.backend.backend() == "torch" else n


def created_values() -> int:
    """Values (weights, optimizer slots) created since TensorFlow's kernel cache was last cleared: what
    `backend.trim_kernel_cache` compares with `CLEAR_KERNELS_AFTER` (see the module docstring)."""
    return _created_values


def kernels_cleared() -> None:
    """`backend.trim_kernel_cache` cleared the kernel cache: count from zero again."""
    global _created_values
    _created_values = 0


def clear() -> None:
    """Forget every remembered model (and reset the counters)."""
    _MODELS.clear()
    _PLANS.clear()
    _CANDIDATES.clear()
    _NO_PLAN.clear()
    stats.update(hits=0, misses=0)
    replays.update(plans=0, builds_skipped=0)


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
    # these are never to be created (the registry is Keras' global state, as in `backend.fresh_keras_state`).
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
        # a deferred variable's value: what creating it would have computed (Keras' `_deferred_initialize`)
        values = [
            v._initializer(v.shape, dtype=v.dtype) if d else v for v, d in zip(fresh.variables, deferred)
        ]
        return _revive(key, kept, values, optimizer)
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


def obtain(
    key: Hashable,
    build: Callable[[], keras.Model],
    make_optimizer: Callable[[], keras.optimizers.Optimizer],
    loss: Any,
    deferrable: bool = True,
) -> keras.Model:
    """`compiled(key, fresh, make_optimizer, loss)` of `fresh = build()` built inside `building(key,
    deferrable)`, the same model in the same state; but once a replay plan of `key` is verified (see the
    module docstring) `build` is not called: the remembered model gets the values the plan computes from
    Python's `random`, which it advances exactly as `build` would have."""
    plan = _PLANS.get(key) if deferrable else None
    kept = _MODELS.get(key)
    if plan is not None and kept is not None and size() > 0:
        optimizer = make_optimizer()
        if _optimizer_reusable(kept, optimizer) and _fits_plan(kept.variables, plan):
            _MODELS.pop(key)
            replays["builds_skipped"] += 1
            return _revive(key, kept, _replay(plan, random), optimizer)
    before = random.getstate()
    with building(key, deferrable):
        fresh = build()
    after = random.getstate()
    deferred = deferrable and kept is not None and all(_is_deferred(v) for v in fresh.variables)
    model = compiled(key, fresh, make_optimizer, loss)
    if deferred and model is kept and key not in _PLANS and key not in _NO_PLAN:
        # A plan made from one build is trusted once a second build, from another state of `random`, gives
        # what it computes: a value that depends on `random` other than through seeds then differs.
        plan = _CANDIDATES.pop(key, None)
        if plan is not None:
            if _plan_holds(plan, before, after, model.variables):
                _PLANS[key] = plan
                replays["plans"] += 1
            else:
                _NO_PLAN.add(key)
        else:
            plan = _make_plan(fresh.variables, before, after)
            if plan is not None and _plan_holds(plan, before, after, model.variables):
                _CANDIDATES[key] = plan
            else:
                _NO_PLAN.add(key)
    return model


# Replay plans by key: (seeds drawn, one entry per variable). An entry is ("random", initializer, i) (a
# seeded Keras initializer, to be run with the i-th seed drawn), ("seed", i) (a SeedGenerator's state,
# [i-th seed, 0]) or ("fixed", initializer) (one that draws nothing: zeros, ones, constants), followed by the
# variable's shape and dtype.
_PLANS: dict[Hashable, tuple[int, list[tuple]]] = {}
_CANDIDATES: dict[Hashable, tuple[int, list[tuple]]] = {}  # made from one build, awaiting a second
_NO_PLAN: set[Hashable] = set()  # keys whose builds are not replayable


def _draw_seeds(n: int, rng: Any) -> list[int]:
    """The `n` seeds Keras' layers draw when constructed without one (`keras.random.make_default_seed`)."""
    return [rng.randint(1, int(1e9)) for _ in range(n)]


def _make_plan(variables: list, before: tuple, after: tuple) -> tuple[int, list[tuple]] | None:
    """The replay plan of a deferred build that left Python's `random` from state `before` at `after`, or
    None when its values do not follow from seeds drawn that way alone."""
    from keras.src.initializers.random_initializers import RandomInitializer

    rng = random.Random()
    rng.setstate(before)
    draws: list[int] = []
    while rng.getstate() != after:
        if len(draws) > 10 * len(variables) + 100:
            return None  # `random` was used otherwise than for seeds
        draws += _draw_seeds(1, rng)
    where = {}
    for i, d in enumerate(draws):
        if d in where:
            return None  # two equal seeds: which went where is ambiguous
        where[d] = i
    entries: list[tuple] = []
    for var in variables:
        init = var._initializer
        if isinstance(init, RandomInitializer):
            if not isinstance(init.seed, int) or init.seed not in where:
                return None
            entries.append(("random", init, where[init.seed]))
        elif isinstance(init, keras.initializers.Initializer):
            entries.append(("fixed", init))
        elif getattr(init, "__name__", "") == "seed_initializer" and "seed" in init.__code__.co_freevars:
            seed = init.__closure__[init.__code__.co_freevars.index("seed")].cell_contents
            if seed not in where:
                return None
            entries.append(("seed", where[seed]))
        else:
            return None
        entries[-1] = (*entries[-1], tuple(var.shape), var.dtype)
    return len(draws), entries


def _fits_plan(variables: list, plan: tuple[int, list[tuple]]) -> bool:
    """The remembered model's variables have the plan's shapes and dtypes (a wrong key never gets values
    of another layout)."""
    entries = plan[1]
    return len(variables) == len(entries) and all(
        tuple(v.shape) == e[-2] and v.dtype == e[-1] for v, e in zip(variables, entries)
    )


def _replay(plan: tuple[int, list[tuple]], rng: Any) -> list[Any]:
    """A plan's values with seeds drawn from `rng` (the `random` module itself when replaying for real)."""
    n, entries = plan
    seeds = _draw_seeds(n, rng)
    values = []
    for entry in entries:
        kind, shape, dtype = entry[0], entry[-2], entry[-1]
        if kind == "random":
            init = copy.copy(entry[1])
            init.seed = seeds[entry[2]]
            values.append(init(shape, dtype=dtype))
        elif kind == "seed":
            values.append(keras.ops.convert_to_tensor([seeds[entry[1]], 0], dtype=dtype))
        else:
            values.append(entry[1](shape, dtype=dtype))
    return values


def _plan_holds(plan: tuple[int, list[tuple]], before: tuple, after: tuple, variables: list) -> bool:
    """Replayed from `before`, the plan ends at `after` and gives `variables`' values bit for bit."""
    rng = random.Random()
    rng.setstate(before)
    values = _replay(plan, rng)
    return rng.getstate() == after and all(
        np.array_equal(np.asarray(v), np.asarray(var), equal_nan=True) for v, var in zip(values, variables)
    )


def _revive(
    key: Hashable, kept: keras.Model, values: list, optimizer: keras.optimizers.Optimizer
) -> keras.Model:
    """`kept` (popped from the cache) with `values` assigned to its variables and `optimizer`'s fresh state,
    remembered again as the most recently used."""
    for var, value in zip(kept.variables, values, strict=True):
        var.assign(value)
    _reset_optimizer(kept.optimizer, optimizer)
    kept.stop_training = False
    _MODELS[key] = kept  # most recently used last
    stats["hits"] += 1
    return kept


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
    return _same_layout(kept.variables, fresh.variables) and _optimizer_reusable(kept, optimizer)


def _optimizer_reusable(kept: keras.Model, optimizer: keras.optimizers.Optimizer) -> bool:
    """`optimizer` (new, unbuilt) differs from `kept`'s at most in its learning rate."""
    if type(kept.optimizer) is not type(optimizer):
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
