"""Early-stopping replay (study/train/regimes.py): hand-made curves, properties, equality with real Keras."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.train.regimes import replay_early_stopping as replay

# ---------------------------------------------------------------- hand-made curves


def test_decreasing_curve_never_stops():
    r = replay([5, 4, 3, 2, 1], patience=1)
    assert r == {"stop_epoch": 5, "epoch_used": 5, "best_epoch": 5, "stopped_early": False}


def test_stops_patience_epochs_after_the_best():
    curve = [1.0, 2.0, 3.0, 4.0, 5.0]
    expected = {"stop_epoch": 3, "epoch_used": 3, "best_epoch": 1, "stopped_early": True}
    assert replay(curve, patience=2) == expected
    assert replay(curve, patience=2, restore_best_weights=True)["epoch_used"] == 1


def test_patience_zero_means_no_early_stopping():
    r = replay([1.0, 2.0, 3.0], patience=0, restore_best_weights=True)
    assert r["stop_epoch"] == 3 and r["epoch_used"] == 3 and not r["stopped_early"] and r["best_epoch"] == 1


def test_restore_best_weights_applies_without_an_early_stop():
    # Keras 3 restores the best weights at train end even when patience never ran out
    r = replay([3.0, 1.0, 2.0], patience=5, restore_best_weights=True)
    assert r["stop_epoch"] == 3 and not r["stopped_early"] and r["epoch_used"] == 2


def test_min_delta_requires_a_large_enough_drop():
    curve = [1.0, 0.95, 0.9, 0.85]
    assert replay(curve, patience=2)["best_epoch"] == 4
    r = replay(curve, patience=2, min_delta=0.1)
    assert r["best_epoch"] == 1 and r["stop_epoch"] == 3


def test_start_from_epoch_skips_warm_up_epochs():
    curve = [1.0, 5.0, 4.0, 6.0, 7.0, 3.0]
    assert replay(curve, patience=2)["stop_epoch"] == 3
    r = replay(curve, patience=2, start_from_epoch=2)
    assert r["best_epoch"] == 3 and r["stop_epoch"] == 5
    nothing_monitored = replay(curve[:2], patience=1, start_from_epoch=2, restore_best_weights=True)
    assert nothing_monitored == {"stop_epoch": 2, "epoch_used": 2, "best_epoch": None, "stopped_early": False}


def test_nan_counts_as_no_improvement_and_a_first_nan_blocks_improvement():
    assert replay([1.0, math.nan, math.nan, 0.5], patience=2)["stop_epoch"] == 3
    r = replay([math.nan, 1.0, 0.5, 0.2], patience=2)
    assert r["best_epoch"] == 1 and r["stop_epoch"] == 3


def test_comparison_is_in_float32_like_keras():
    # 1 - 1e-12 is smaller in float64 but equal in float32, so Keras sees no improvement
    r = replay([1.0, 1.0 - 1e-12, 5.0], patience=1)
    assert r["best_epoch"] == 1 and r["stopped_early"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_losses": [], "patience": 1}, "non-empty"),
        ({"val_losses": [[1.0]], "patience": 1}, "1-D"),
        ({"val_losses": ["a"], "patience": 1}, "numbers"),
        ({"val_losses": [1.0], "patience": -1}, "patience"),
        ({"val_losses": [1.0], "patience": 1.5}, "patience"),
        ({"val_losses": [1.0], "patience": True}, "patience"),
        ({"val_losses": [1.0], "patience": 1, "min_delta": -0.1}, "min_delta"),
        ({"val_losses": [1.0], "patience": 1, "start_from_epoch": -2}, "start_from_epoch"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        replay(**kwargs)


# ---------------------------------------------------------------- properties

losses = st.lists(
    st.one_of(st.floats(0, 10, allow_nan=False), st.sampled_from([0.5, 1.0, 1.0, math.nan, math.inf])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    curve=losses,
    patience=st.integers(0, 12),
    start=st.integers(0, 5),
    min_delta=st.sampled_from([0.0, 0.01, 0.5]),
    restore=st.booleans(),
)
def test_replay_properties(curve, patience, start, min_delta, restore):
    e = len(curve)
    r = replay(curve, patience, min_delta=min_delta, start_from_epoch=start, restore_best_weights=restore)
    assert 1 <= r["stop_epoch"] <= e
    assert r["stopped_early"] == (r["stop_epoch"] < e)
    if r["best_epoch"] is None:
        assert e <= start and r["epoch_used"] == e
    else:
        assert start < r["best_epoch"] <= r["stop_epoch"]
        assert r["epoch_used"] in (r["stop_epoch"], r["best_epoch"])
    if r["stopped_early"]:
        assert patience > 0 and r["stop_epoch"] - r["best_epoch"] == patience
        # what follows the stop cannot matter
        assert replay(curve[: r["stop_epoch"]] + [0.0] * 3, patience, min_delta, start, restore) == r
    if patience >= e:
        assert not r["stopped_early"]
    if patience > 0:
        # more patience never stops earlier
        assert replay(curve, patience + 1, min_delta, start, restore)["stop_epoch"] >= r["stop_epoch"]


@settings(max_examples=200, deadline=None)
@given(curve=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=40), patience=st.integers(1, 8))
def test_best_is_the_first_float32_minimum_of_the_trained_epochs(curve, patience):
    r = replay(curve, patience)
    trained = np.asarray(curve[: r["stop_epoch"]], dtype=np.float32)
    assert r["best_epoch"] == int(np.argmin(trained)) + 1


# ---------------------------------------------------------------- equality with Keras


@pytest.fixture(scope="module")
def keras_runs():
    """One full 8-epoch run (weights recorded per epoch) and real EarlyStopping runs of the same model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already initialised by another test; op determinism still holds

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 1))
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x @ w + 2 * rng.normal(size=(64, 1))).astype("float32")
    xv = rng.normal(size=(32, 8)).astype("float32")
    yv = (xv @ w + 2 * rng.normal(size=(32, 1))).astype("float32")

    class RecordWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = []

        def on_epoch_end(self, epoch, logs=None):
            self.weights.append(self.model.get_weights())

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    # a large step so that the validation loss goes down, up and down again (lr chosen for this data)
    model.compile(keras.optimizers.Adam(0.05), loss="mse", jit_compile=False)  # XLA only adds compile time
    model.optimizer.build(model.trainable_variables)
    initial_weights = model.get_weights()
    initial_optimizer = [v.numpy() for v in model.optimizer.variables]

    def fit(callbacks):
        # one compiled model reset to the same start (weights and Adam state) for every run: same
        # arithmetic as a fresh model, without re-tracing the train function each time
        model.set_weights(initial_weights)
        for var, value in zip(model.optimizer.variables, initial_optimizer):
            var.assign(value)
        history = model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=8,
            batch_size=16,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return history.history["val_loss"], model.get_weights()

    recorder = RecordWeights()
    full_curve, _ = fit([recorder])

    cases = [
        dict(patience=1),
        dict(patience=3, restore_best_weights=True),
        dict(patience=25, restore_best_weights=True),  # never stops: Keras 3 restores at train end
        dict(patience=2, start_from_epoch=4, restore_best_weights=True),
        dict(patience=2, min_delta=0.3),
    ]
    real = []
    for case in cases:
        es = keras.callbacks.EarlyStopping(monitor="val_loss", **case)
        curve, final_weights = fit([es])
        real.append((case, curve, final_weights))
    return full_curve, recorder.weights, real


def test_replay_matches_real_keras_early_stopping(keras_runs):
    full_curve, weights_per_epoch, real = keras_runs
    outcomes = set()
    for case, curve, final_weights in real:
        r = replay(full_curve, **case)
        assert r["stop_epoch"] == len(curve), case
        assert curve == full_curve[: len(curve)], "training is not deterministic; the comparison is void"
        replayed = weights_per_epoch[r["epoch_used"] - 1]
        assert all(np.array_equal(a, b) for a, b in zip(replayed, final_weights)), case
        outcomes.add((r["stopped_early"], r["epoch_used"] == r["stop_epoch"]))
    # the cases exercise early stops, full runs, and restored (earlier) weights
    assert (True, True) in outcomes and (True, False) in outcomes and (False, False) in outcomes


def test_no_early_stopping_uses_the_last_epoch(keras_runs):
    full_curve, _, _ = keras_runs
    r = replay(full_curve, patience=0)
    assert r["stop_epoch"] == r["epoch_used"] == len(full_curve) and not r["stopped_early"]
