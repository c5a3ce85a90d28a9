"""`study.train.model_cache`: which remembered model a phase gets, and in what state (tiny Keras models)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from study.train import model_cache  # noqa: E402
from study.train import phases as training  # noqa: E402


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch):
    training.configure(1)
    monkeypatch.delenv("STUDY_MODEL_CACHE", raising=False)
    model_cache.clear()
    yield
    model_cache.clear()


def _model(width: int = 4, seed: int = 0, dropout: bool = True) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(width, activation="relu")(inputs)
    if dropout:
        x = keras.layers.Dropout(0.5)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def _train(model: keras.Model) -> None:
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(16, 3)
    model.fit(x, x.sum(axis=1, keepdims=True), batch_size=8, epochs=2, shuffle=False, verbose=0)


def _values(variables) -> list[np.ndarray]:
    return [np.asarray(v) for v in variables]


def test_first_use_compiles_the_fresh_model_and_later_uses_take_its_state():
    first = model_cache.compiled("k", _model(seed=0), lambda: keras.optimizers.Adam(0.1), "mse")
    _train(first)
    trained = _values(first.variables)
    fresh = _model(seed=1)
    wanted = _values(fresh.variables)
    got = model_cache.compiled("k", fresh, lambda: keras.optimizers.Adam(0.02), "mse")
    assert got is first and model_cache.stats == {"hits": 1, "misses": 1}
    # every variable, the dropout seed state included, now holds the fresh model's value
    assert len(got.variables) == 5
    for a, b in zip(_values(got.variables), wanted):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(trained, wanted))
    opt = got.optimizer
    assert int(opt.iterations.numpy()) == 0
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.02)
    assert all(not np.any(np.asarray(v)) for v in opt.variables[2:])  # moments reset to zero


def test_remembered_model_trains_like_a_new_one_bit_for_bit():
    reference = _model(seed=1)
    reference.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    _train(reference)
    _train(model_cache.compiled("k", _model(seed=0), lambda: keras.optimizers.Adam(0.1), "mse"))
    reused = model_cache.compiled("k", _model(seed=1), lambda: keras.optimizers.Adam(0.05), "mse")
    _train(reused)
    assert model_cache.stats["hits"] == 1
    for a, b in zip(_values(reused.variables), _values(reference.variables)):
        np.testing.assert_array_equal(a, b)


def test_other_key_layout_or_optimizer_settings_get_a_new_model():
    a = model_cache.compiled("k", _model(), lambda: keras.optimizers.Adam(0.1), "mse")
    # same key, other architecture: never assigned into the wrong model
    b = model_cache.compiled("k", _model(width=6), lambda: keras.optimizers.Adam(0.1), "mse")
    assert b is not a and [tuple(v.shape) for v in b.variables][0] == (3, 6)
    # same architecture, an optimizer setting that is a constant of the traced graph
    c = model_cache.compiled("k", _model(width=6), lambda: keras.optimizers.Adam(0.1, beta_1=0.5), "mse")
    assert c is not b and c.optimizer.beta_1 == 0.5
    assert model_cache.stats == {"hits": 0, "misses": 3}


def test_least_recently_used_model_is_dropped_and_zero_turns_the_cache_off(monkeypatch):
    monkeypatch.setenv("STUDY_MODEL_CACHE", "2")
    adam = lambda: keras.optimizers.Adam(0.1)  # noqa: E731
    a = model_cache.compiled("a", _model(), adam, "mse")
    model_cache.compiled("b", _model(), adam, "mse")
    assert model_cache.compiled("a", _model(), adam, "mse") is a  # "a" is now the most recent
    model_cache.compiled("c", _model(), adam, "mse")  # drops "b"
    assert model_cache.compiled("a", _model(), adam, "mse") is a
    assert model_cache.stats == {"hits": 2, "misses": 3}
    model_cache.compiled("b", _model(), adam, "mse")
    assert model_cache.stats["misses"] == 4

    monkeypatch.setenv("STUDY_MODEL_CACHE", "0")
    model_cache.clear()
    x = model_cache.compiled("a", _model(), adam, "mse")
    assert model_cache.compiled("a", _model(), adam, "mse") is not x
    assert model_cache.stats == {"hits": 0, "misses": 2}


@pytest.mark.parametrize("bad", ["-1", "four", "1.5"])
def test_a_bad_cache_size_names_the_variable(monkeypatch, bad):
    monkeypatch.setenv("STUDY_MODEL_CACHE", bad)
    with pytest.raises(ValueError, match="STUDY_MODEL_CACHE"):
        model_cache.compiled("k", _model(), lambda: keras.optimizers.Adam(0.1), "mse")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's kernel cache")
def test_kernel_cache_is_cleared_once_enough_values_were_created(monkeypatch):
    from tensorflow.python.eager import context

    from study.train import backend

    cleared = []
    monkeypatch.setattr(context.Context, "clear_kernel_cache", lambda self: cleared.append(True))
    monkeypatch.setattr(model_cache, "_created_values", 0)
    monkeypatch.setattr(model_cache, "CLEAR_KERNELS_AFTER", 100)
    adam = lambda: keras.optimizers.Adam(0.1)  # noqa: E731
    model_cache.compiled("k", _model(width=4), adam, "mse")  # 3*4+4 + 4+1 weights, x3 with Adam's slots
    assert model_cache._created_values == 3 * 21 + 2  # + the dropout seed state (2 values, not trained)
    assert not backend.trim_kernel_cache() and not cleared
    # a hit creates the fresh model's variables only (the kept optimizer's slots are reset, not made anew)
    model_cache.compiled("k", _model(width=4), adam, "mse")
    assert model_cache._created_values == 3 * 21 + 2 + 23
    assert not backend.trim_kernel_cache()
    # a fresh model built for a remembered one creates none
    with model_cache.building("k"):
        deferred = _model(width=4)
    model_cache.compiled("k", deferred, adam, "mse")
    assert model_cache._created_values == 3 * 21 + 2 + 23
    model_cache.compiled("k", _model(width=4), adam, "mse")
    assert backend.trim_kernel_cache() and cleared == [True]
    assert model_cache._created_values == 0


def _created_variables(build):
    """(what `build()` returned, how many TensorFlow variables it created; on other backends, how many of its
    variables hold a value: those created)."""
    if keras.backend.backend() != "tensorflow":
        out = build()
        return out, sum(not model_cache._is_deferred(v) for v in out.variables)
    import tensorflow as tf

    created = []

    def creator(next_creator, **kwargs):
        created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        out = build()
    return out, len(created)


def test_a_model_built_for_a_remembered_one_creates_no_variables_and_gives_it_a_normal_builds_values():
    from keras.src.backend.common import global_state

    adam = lambda: keras.optimizers.Adam(0.1)  # noqa: E731
    with model_cache.building("k"):  # nothing remembered yet: a normal build
        first, n_first = _created_variables(lambda: _model(seed=3))
    assert n_first == 5
    kept = model_cache.compiled("k", first, adam, "mse")
    _train(kept)
    wanted = _values(_model(seed=1).variables)  # what a normal build with seed 1 holds

    def deferred_build():
        with model_cache.building("k"):
            return _model(seed=1)

    fresh, n_created = _created_variables(deferred_build)
    assert n_created == 0 and all(model_cache._is_deferred(v) for v in fresh.variables)
    assert not global_state.get_global_attribute("uninitialized_variables", [])  # never created later
    got = model_cache.compiled("k", fresh, adam, "mse")
    assert got is kept and model_cache.stats == {"hits": 1, "misses": 1}
    for a, b in zip(_values(got.variables), wanted):  # dropout seed state included
        np.testing.assert_array_equal(a, b)
    # and it trains like a model built normally, bit for bit
    reference = _model(seed=1)
    reference.compile(optimizer=adam(), loss="mse")
    _train(reference)
    _train(got)
    for a, b in zip(_values(got.variables), _values(reference.variables)):
        np.testing.assert_array_equal(a, b)


def test_a_deferred_model_that_does_not_fit_the_remembered_one_is_created_and_used():
    adam = lambda: keras.optimizers.Adam(0.1)  # noqa: E731
    model_cache.compiled("k", _model(width=4), adam, "mse")
    with model_cache.building("k"):
        other = _model(width=6, seed=2)  # same key, another layout
    got = model_cache.compiled("k", other, adam, "mse")
    assert got is other and model_cache.stats == {"hits": 0, "misses": 2}
    for a, b in zip(_values(got.variables), _values(_model(width=6, seed=2).variables)):
        np.testing.assert_array_equal(a, b)
    _train(got)  # real variables: it trains


def test_a_build_that_reads_weights_is_never_deferred():
    model_cache.compiled("k", _model(), lambda: keras.optimizers.Adam(0.1), "mse")
    with model_cache.building("k", deferrable=False):
        fresh, n_created = _created_variables(lambda: _model())
    assert n_created == 5 and not any(model_cache._is_deferred(v) for v in fresh.variables)


@pytest.mark.slow
def test_a_reused_ray_worker_trains_its_kept_models_and_gives_a_fresh_workers_results(tmp_path, monkeypatch):
    """Seeds 0, 1, 0 one after another in one Ray Tune worker (`reuse_actors=True`, as studies run): the
    second and third trials get the worker's kept pretext and fine-tune models from the cache (its counters,
    recorded per trial in the worker, say so), and the third, run on those kept models in a process that
    already trained (Keras session, TensorFlow graphs, RNG state, cached data), equals the first bit for bit.

    (Supersedes tests/test_reuse.py, which checked only the equal results: they hold with the cache off too.)
    """
    import json

    ray = pytest.importorskip("ray")
    from ray import tune

    from study.spec.presets import get_preset

    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    log = tmp_path / "model-cache.jsonl"

    def recording_trial(config):
        """The study's trainable, and what the model cache of this worker did during the trial."""
        import json
        import os

        from study.train import model_cache
        from study.trainables import two_stage_trial

        before = dict(model_cache.stats)
        two_stage_trial(config)
        used = {k: model_cache.stats[k] - before[k] for k in before}
        with open(log, "a") as f:
            f.write(json.dumps({"seed": config["seed"], "pid": os.getpid(), **used}) + "\n")

    smoke = get_preset("smoke")
    # Rotation with its own pretext phase each time (no pretext cache), so both phases run in the reused
    # process: one pretext and one fine-tune model per trial.
    base = smoke.base.replace(task="rotation", share_pretext=False, pretext_epochs=2)
    space = {**base.to_dict(), "seed": tune.grid_search([0, 1, 0])}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(
            tune.with_resources(recording_trial, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), name="reuse", verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert not grid.errors
    done = sorted((r.metrics for r in grid), key=lambda m: m["trial_id"])
    first, other, again = done
    assert first["pid"] == other["pid"] == again["pid"], "the worker was not reused"
    # In trial order: the first trial compiled both models; the next two trained the kept ones.
    used = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(u["seed"], u["pid"]) for u in used] == [(0, first["pid"]), (1, first["pid"]), (0, first["pid"])]
    assert [(u["hits"], u["misses"]) for u in used] == [(0, 2), (2, 0), (2, 0)], used
    assert first["regimes"] == again["regimes"]
    timed = ("pretext_key", "pretext_seconds")  # the phase's wall time is its cost, not a result
    assert {k: v for k, v in first.items() if k.startswith("pretext_") and k not in timed} == {
        k: v for k, v in again.items() if k.startswith("pretext_") and k not in timed
    }
    assert first["pretext_seconds"] > 0 and again["pretext_seconds"] > 0
    assert first["probe_auc"] == again["probe_auc"]
    assert first["regimes"] != other["regimes"]  # a different seed does differ


def _obtain(seed: int, build=None, deferrable: bool = True) -> keras.Model:
    """`obtain` as a phase calls it: reseeded first (as `backend.fresh_keras_state`), then built."""
    import random

    keras.utils.set_random_seed(seed)
    random.seed(seed)
    return model_cache.obtain(
        "k",
        build or (lambda: _model_unseeded()),
        lambda: keras.optimizers.Adam(0.1),
        "mse",
        deferrable=deferrable,
    )


def _model_unseeded(width: int = 4) -> keras.Model:
    inputs = keras.Input((3,))
    x = keras.layers.Dropout(0.5)(keras.layers.Dense(width, activation="relu")(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, bias_initializer="ones")(x))


def test_a_verified_replay_skips_the_build_and_gives_its_values_and_random_state_bit_for_bit():
    import random

    first = _obtain(0)  # a miss: compiled and remembered
    _train(first)
    assert _obtain(1) is first and model_cache.replays == {"plans": 0, "builds_skipped": 0}  # a plan made
    _train(first)
    assert _obtain(3) is first and model_cache.replays == {"plans": 1, "builds_skipped": 0}  # and checked
    calls = []

    def build():
        calls.append(1)
        return _model_unseeded()

    got = _obtain(2, build)
    assert got is first and not calls and model_cache.replays == {"plans": 1, "builds_skipped": 1}
    after_replay = random.getstate()
    # what a normal build with the same seeds holds (kernels, biases of ones, the dropout seed state), and
    # Python's `random` where that build leaves it
    keras.utils.set_random_seed(2)
    random.seed(2)
    wanted = _model_unseeded()
    assert random.getstate() == after_replay
    assert len(wanted.variables) == 5
    for a, b in zip(_values(got.variables), _values(wanted.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    wanted.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    _train(wanted)
    _train(got)
    for a, b in zip(_values(got.variables), _values(wanted.variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_replay_plan_when_the_build_uses_random_otherwise_or_is_not_deferrable():
    import random

    def noisy():
        inputs = keras.Input((3,))
        x = keras.layers.Dense(4)(inputs)
        # a value drawn from `random` but not as a seed: a plan would replay the first build's constant
        return keras.Model(
            inputs, keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(random.random()))(x)
        )

    for seed in range(4):
        _obtain(seed, noisy)
    assert model_cache.replays == {"plans": 0, "builds_skipped": 0} and model_cache.stats["hits"] == 3
    model_cache.clear()
    for seed in range(4):
        _obtain(seed, deferrable=False)
    assert model_cache.replays == {"plans": 0, "builds_skipped": 0} and model_cache.stats["hits"] == 3
