"""Pretext and fine-tune phases (`study.train.pretext_phase`, `study.train.finetune_phase`) on tiny synthetic data (32 px, a 4..16-channel encoder).

Everything runs on 1 backend thread so results are bitwise reproducible (docs RAY.md). The phases run on the
backend Keras runs on (`KERAS_BACKEND`; CI runs this file on TensorFlow and on JAX); tests of one backend's own
machinery are marked `tensorflow_only`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from study.data import DecodedData, Split  # noqa: E402
from study.spec.config import TrialConfig, regime_name, resolved_task_params  # noqa: E402
from study.tasks import references  # noqa: E402
from study.tasks import registry as pretext  # noqa: E402
from study.train import (  # noqa: E402
    backend,
    finetune_phase,
    models,  # noqa: E402
    pretext_phase,
    splits,
)
from study.train import batches as train_batches  # noqa: E402
from study.train import phases as training  # noqa: E402
from study.train import results as train_results  # noqa: E402

SIZE = 32
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's own machinery (KERAS_BACKEND=tensorflow)"
)


@pytest.fixture(scope="module", autouse=True)
def _backend_threads():
    training.configure(1)


def _split(rng: np.random.Generator, n: int, name: str) -> Split:
    labels = np.arange(n, dtype=np.int64) % 2
    # Malignant images are darker on average: a weak signal a tiny CNN can pick up within a few epochs.
    base = rng.normal(150, 40, (n, SIZE, SIZE, 3)) - 50 * labels[:, None, None, None]
    images = np.clip(np.rint(base), 0, 255).astype(np.uint8)
    return Split(images=images, labels=labels, paths=[f"{name}/{i}.png" for i in range(n)])


@pytest.fixture(scope="module")
def data() -> DecodedData:
    rng = np.random.default_rng(7)
    return DecodedData(
        train=_split(rng, 40, "train"),
        test=_split(rng, 16, "test"),
        fingerprint="synthetic-test",
        root="<memory>",
        image_size=SIZE,
        notes=[],
    )


BASE = TrialConfig(
    encoder="small",
    encoder_widths=(4, 8, 8, 16),
    image_size=SIZE,
    seed=0,
    threads=1,
    finetune_epochs=6,
    lr=1e-2,
    batch_size=8,
    patiences=(0, 1, 2),
    pretext_epochs=2,
    pretext_batch_size=16,
)


def _run_with_snapshots(trial, data, tmp_path_factory):
    """(result, model weights after every epoch, kept via `save_state`) of an uninterrupted run."""
    snapshots = []

    def on_epoch(epoch, logs, save_state):
        d = tmp_path_factory.mktemp(f"epoch{epoch}")
        save_state(d)
        snapshots.append(train_results.load_arrays(d / "weights.npz"))

    result = training.run_finetune(trial, data, on_epoch=on_epoch)
    return result, snapshots


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """One uninterrupted 6-epoch run; its model weights after every epoch are kept via `save_state`."""
    return _run_with_snapshots(BASE, data, tmp_path_factory)


@pytest.fixture(scope="module")
def stopping(data, tmp_path_factory):
    """A 6-epoch run whose validation loss rises after epoch 1 on TensorFlow and on JAX (seed 1; seed 0's
    curve falls throughout on JAX), so that early stopping with patience 1 or 2 fires."""
    return _run_with_snapshots(BASE.replace(seed=1), data, tmp_path_factory)


def _assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------------------- fine-tune
def test_finetune_history_and_regimes(straight, data):
    result, snapshots = straight
    assert not result.diverged and result.diverged_epoch is None
    assert [h["epoch"] for h in result.history] == list(range(1, 7))
    assert len(snapshots) == 6
    for key in ("loss", "val_loss", "val_auc", "test_auc", "test_soft_accuracy", "test_loss", "test_f1"):
        assert math.isfinite(result.history[0][key])
    assert set(result.regimes) == {regime_name(p) for p in BASE.patiences}
    none = result.regimes["none"]
    assert none["stop_epoch"] == none["epoch_used"] == 6 and not none["diverged"]
    for regime in result.regimes.values():
        used = result.history[regime["epoch_used"] - 1]
        assert regime["test_auc"] == used["test_auc"] and regime["val_loss"] == used["val_loss"]
    # the validation rows are disjoint from the training rows and together cover the training split
    assert not set(result.train_index) & set(result.val_index)
    assert len(result.train_index) + len(result.val_index) == len(data.train.labels)
    # training moved the weights; the last snapshot is the final model
    assert not np.array_equal(snapshots[0][0], snapshots[-1][0])
    _assert_weights_equal(snapshots[-1], result.model_weights)
    # the linear probe of the encoder it started from (random here), before any fine-tune step
    assert 0 <= result.probe["probe_auc"] <= 1 and result.probe["probe_c"] > 0
    assert result.probe["probe_s"] >= 0


def _probe_without_time(probe):
    return {k: v for k, v in probe.items() if k != "probe_s"}


def test_same_seed_is_bitwise_identical_and_a_resumed_run_replays_it_exactly(straight, data, tmp_path):
    result, snapshots = straight

    class Interrupted(Exception):
        pass

    seen = []

    def stop_after_two(epoch, logs, save_state):
        seen.append((epoch, logs))
        if epoch == 2:
            save_state(tmp_path / "state")  # a folder that does not exist yet
            raise Interrupted

    with pytest.raises(Interrupted):
        training.run_finetune(BASE, data, on_epoch=stop_after_two)
    # a second run with the same seed: the same numbers and bitwise the same weights
    assert [logs for _, logs in seen] == result.history[:2]
    _assert_weights_equal(train_results.load_arrays(tmp_path / "state" / "weights.npz"), snapshots[1])

    resumed_epochs = []
    resumed = training.run_finetune(
        BASE, data, resume_dir=tmp_path / "state", on_epoch=lambda e, logs, s: resumed_epochs.append(e)
    )
    assert [e for e, _ in seen] == [1, 2] and resumed_epochs == [3, 4, 5, 6]
    assert resumed.history == result.history
    assert resumed.regimes == result.regimes
    _assert_weights_equal(resumed.model_weights, result.model_weights)
    # the probe of the starting encoder is carried in the saved state, not recomputed from resumed weights
    assert _probe_without_time(resumed.probe) == _probe_without_time(result.probe)

    with pytest.raises(ValueError, match=r"different \['lr'\]"):
        training.run_finetune(BASE.replace(lr=0.5), data, resume_dir=tmp_path / "state")
    with pytest.raises(FileNotFoundError, match="no fine-tune state"):
        training.run_finetune(BASE, data, resume_dir=tmp_path / "nothing")


def test_other_seed_gives_another_split_and_label_fraction_a_stratified_subset(straight, data):
    result, _ = straight
    other = training.run_finetune(BASE.replace(seed=1, label_fraction=0.5, finetune_epochs=1), data)
    assert not np.array_equal(other.val_index, result.val_index)
    assert other.history[0]["val_loss"] != result.history[0]["val_loss"]
    full_train, full_val = splits.validation_split(BASE.replace(seed=1), data)
    assert set(other.train_index) < set(full_train)
    assert len(other.train_index) == len(full_train) // 2
    assert set(data.train.labels[other.train_index]) == {0, 1}
    # The label budget covers validation too: half of the validation labels, both classes kept.
    assert set(other.val_index) < set(full_val) and set(data.train.labels[other.val_index]) == {0, 1}
    assert len(other.val_index) < len(full_val)


def _with_lesions(data: DecodedData) -> DecodedData:
    """`data` whose training images come in lesions of 3 images with one label each (as a labels CSV gives)."""
    import dataclasses

    n = len(data.train)
    groups = np.array([f"lesion-{i % 2}-{i // 6}" for i in range(n)])
    return dataclasses.replace(data, train=dataclasses.replace(data.train, groups=groups))


def test_validation_split_and_label_subset_keep_lesions_whole(data):
    grouped = _with_lesions(data)
    groups = grouped.train.groups
    trial = BASE.replace(label_fraction=0.5, finetune_epochs=1)
    train, val = splits.validation_split(trial, grouped)
    assert len(val) and not set(groups[train]) & set(groups[val])
    ft_train, ft_val = splits.finetune_split(trial, grouped)
    assert set(ft_val) <= set(val) and len(ft_val)
    assert set(ft_train) < set(train) and set(data.train.labels[ft_train]) == {0, 1}
    assert np.isin(groups[train], groups[ft_train]).sum() == len(ft_train)  # whole lesions
    assert np.isin(groups[val], groups[ft_val]).sum() == len(ft_val)
    # folder data (no groups): the ungrouped split, as before
    plain = splits.validation_split(trial, data)
    from study.data import stratified_split

    np.testing.assert_array_equal(
        plain[1], stratified_split(data.train.labels, trial.val_fraction, trial.seed)[1]
    )
    result = training.run_finetune(trial, grouped)
    np.testing.assert_array_equal(result.train_index, ft_train)
    np.testing.assert_array_equal(result.val_index, ft_val)


@pytest.mark.parametrize(("restore_best_weights", "patience"), [(False, 1), (True, 2)])
def test_replayed_regimes_equal_real_keras_early_stopping(stopping, data, restore_best_weights, patience):
    result, snapshots = stopping
    trial = BASE.replace(seed=1, restore_best_weights=restore_best_weights)
    regime = finetune_phase.replay_regimes(trial, result.history, None)[regime_name(patience)]
    assert regime["stop_epoch"] < trial.finetune_epochs, "no early stop: the comparison would be vacuous"
    early = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=restore_best_weights
    )
    real = training.run_finetune(trial, data, callbacks=[early])
    assert len(real.history) == regime["stop_epoch"] == early.stopped_epoch + 1
    assert real.history == result.history[: regime["stop_epoch"]]
    if restore_best_weights:
        assert regime["epoch_used"] == regime["best_epoch"] == early.best_epoch + 1
    # the weights Keras ends with are those of the regime's epoch_used, bit for bit ...
    _assert_weights_equal(real.model_weights, snapshots[regime["epoch_used"] - 1])
    # ... so the regime's test metrics are that model's test metrics
    assert regime["test_auc"] == result.history[regime["epoch_used"] - 1]["test_auc"]


def test_absurd_learning_rate_diverges_without_raising(data):
    called = []
    result = training.run_finetune(
        BASE.replace(lr=1e12, finetune_epochs=3), data, on_epoch=lambda e, logs, s: called.append(e)
    )
    assert result.diverged
    assert len(result.history) == result.diverged_epoch - 1 and called == [h["epoch"] for h in result.history]
    assert all(math.isfinite(h["loss"]) for h in result.history)
    none = result.regimes["none"]  # no early stopping: it would have trained into the divergence
    assert none["diverged"] and none["stop_epoch"] == result.diverged_epoch and math.isnan(none["test_auc"])


def test_regimes_that_stop_before_the_divergence_stay_valid():
    trial = BASE.replace(patiences=(0, 2, 3))
    history = [
        {"epoch": e, "val_loss": v, "test_auc": a}
        for e, (v, a) in enumerate([(1.0, 0.6), (0.9, 0.7), (1.1, 0.65), (1.2, 0.62)], start=1)
    ]
    regimes = finetune_phase.replay_regimes(trial, history, diverged_epoch=5)
    assert regimes["patience2"] == {
        "patience": 2,
        "stop_epoch": 4,
        "best_epoch": 2,
        "epoch_used": 4,
        "diverged": False,
        "val_loss": 1.2,
        "test_auc": 0.62,
    }
    for name in ("none", "patience3"):  # would still be training when epoch 5 diverged
        assert regimes[name]["diverged"] and regimes[name]["stop_epoch"] == 5
        assert math.isnan(regimes[name]["test_auc"]) and regimes[name]["epoch_used"] is None
    with_restore = finetune_phase.replay_regimes(trial.replace(restore_best_weights=True), history, None)
    assert with_restore["patience2"]["epoch_used"] == 2 and with_restore["patience2"]["test_auc"] == 0.7
    nothing = finetune_phase.replay_regimes(trial, [], diverged_epoch=1)  # diverged in the first epoch
    assert all(r["diverged"] and math.isnan(r["test_auc"]) for r in nothing.values())


def test_data_of_another_size_is_rejected(data):
    with pytest.raises(ValueError, match=r"image_size=64"):
        training.run_finetune(BASE.replace(image_size=64), data)


def _per_epoch_reference(trial, data, encoder_weights=None):
    """The fine-tune loop as it was up to commit 6ad10cb, kept here as the reference for the one-`fit` loop:
    `model.fit` for one epoch and `model.predict` on validation + test images after each epoch, the linear
    probe's features by `model.predict`. Returns (history, diverged_epoch, final weights, probe scores)."""
    from study.train import metrics as study_metrics
    from study.train import model_cache
    from study.train.probe import linear_probe

    training.configure(trial.threads)
    backend.fresh_keras_state(trial.seed)
    train_index, val_index = splits.finetune_split(trial, data)
    x_train, y_train = data.train.images[train_index], finetune_phase._binary(data.train.labels[train_index])
    x_val, y_val = data.train.images[val_index], data.train.labels[val_index]
    x_test, y_test = data.test.images, data.test.labels
    batches = train_batches.IndexedBatches(x_train, y_train, trial.batch_size)
    eval_batches = train_batches.batched(np.concatenate([x_val, x_test]), train_batches.EVAL_BATCH_SIZE)
    encoder = models.trial_encoder(
        trial, "random" if encoder_weights is not None else trial.weights, trial.weights_path
    )
    if encoder_weights is not None:
        models.set_encoder_weights(encoder, encoder_weights)
    model = model_cache.compiled(
        models.model_key(trial, "classification", "binary_crossentropy"),
        models.build_model("classification", encoder, mixed_precision=trial.mixed_precision),
        lambda: keras.optimizers.Adam(trial.lr),
        backend.loss("binary_crossentropy"),  # the phase's (PyTorch's own raises on a diverged model's NaN)
    )
    features = keras.Model(model.input, model.get_layer("gap").output)
    f_train = np.asarray(features.predict(batches.in_order(np.arange(len(x_train))), verbose=0), np.float64)
    f_eval = np.asarray(features.predict(eval_batches, verbose=0), np.float64)
    n_val = len(y_val)
    probe = linear_probe((f_train, y_train.reshape(-1)), (f_eval[:n_val], y_val), (f_eval[n_val:], y_test))
    bce = keras.losses.BinaryCrossentropy()
    history, diverged_epoch = [], None
    for epoch in range(trial.finetune_epochs):
        order = np.random.default_rng([trial.seed, finetune_phase.STREAM_FINETUNE_ORDER, epoch]).permutation(
            len(x_train)
        )
        fit = model.fit(
            batches.in_order(order), epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0
        )
        loss = float(fit.history["loss"][-1])
        p_eval = np.asarray(model.predict(eval_batches, verbose=0), np.float64).reshape(-1)
        p_val, p_test = p_eval[:n_val], p_eval[n_val:]
        if not (math.isfinite(loss) and np.all(np.isfinite(p_eval))):
            diverged_epoch = epoch + 1
            break
        logs = {"epoch": epoch + 1, "loss": loss}
        logs.update(
            {f"val_{k}": float(v) for k, v in study_metrics.classification_metrics(y_val, p_val).items()}
        )
        logs["val_loss"] = float(bce(finetune_phase._binary(y_val), p_val[:, None]))
        logs.update(
            {f"test_{k}": float(v) for k, v in study_metrics.classification_metrics(y_test, p_test).items()}
        )
        if not math.isfinite(logs["val_loss"]):
            diverged_epoch = epoch + 1
            break
        history.append(logs)
    return history, diverged_epoch, model.get_weights(), probe


@pytest.mark.parametrize(
    "trial",
    [
        BASE,
        BASE.replace(seed=2, label_fraction=0.5, batch_size=6, finetune_epochs=4),
        BASE.replace(lr=1e12, finetune_epochs=3),  # diverges
    ],
    ids=["base", "seed2-half-labels", "diverging"],
)
def test_one_fit_call_per_phase_equals_the_per_epoch_loop_bit_for_bit(trial, data, monkeypatch):
    """The fine-tune phase trains in one `fit` call with its per-epoch work in a callback, and evaluates
    through the model's predict function: the history, regimes, probe and weights equal those of the
    former loop (a `fit` and a `predict` call per epoch) exactly; also from pretext weights, with the
    model cache on (the reference then trains the same remembered model)."""
    from study.train import model_cache

    monkeypatch.setenv("STUDY_MODEL_CACHE", "4")
    pre = _pretext("rotation", data)[0].encoder_weights if trial is BASE else None
    for weights in (None, pre) if pre is not None else (None,):
        history, diverged_epoch, weights_after, probe = _per_epoch_reference(trial, data, weights)
        hits = model_cache.stats["hits"]
        result = training.run_finetune(trial, data, encoder_weights=weights)
        assert model_cache.stats["hits"] == hits + 1  # same architecture: the same remembered model
        assert result.history == history and result.diverged_epoch == diverged_epoch
        assert result.regimes == finetune_phase.replay_regimes(trial, history, diverged_epoch)
        assert _probe_without_time(result.probe) == probe
        _assert_weights_equal(result.model_weights, weights_after)
        assert len(result.timings) == len(history) + (diverged_epoch is not None)
    if trial.lr > 1:
        assert diverged_epoch is not None, "the diverging case did not diverge"


def test_predicting_through_the_predict_function_equals_model_predict(data):
    training.configure(1)
    backend.fresh_keras_state(0)
    model = models.build_model("classification", models.trial_encoder(BASE, "random", None))
    x = data.test.images
    expected = model.predict(train_batches.batched(x, 5), verbose=0)
    np.testing.assert_array_equal(
        train_batches.predict_batches(model, train_batches.tensor_batches(x, 5)), expected
    )
    pairs = train_batches.batched((x, np.zeros(len(x), np.float32)), 5)
    np.testing.assert_array_equal(train_batches.predict_batches(model, pairs), expected)
    # after training, the predictions follow the trained weights
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    model.fit(x, np.ones((len(x), 1), np.float32), batch_size=8, epochs=1, verbose=0)
    expected = model.predict(x, batch_size=5, verbose=0)
    np.testing.assert_array_equal(
        train_batches.predict_batches(model, train_batches.tensor_batches(x, 5)), expected
    )


# ----------------------------------------------------------------------------------------------- pretext
_PRETEXT: dict[str, tuple] = {}


def _pretext(task, data):
    """(result, on_epoch calls) of a 2-epoch pretext run, computed once per task for this module."""
    if task not in _PRETEXT:
        logged = []
        result = training.run_pretext(
            BASE.replace(task=task), data, on_epoch=lambda e, logs: logged.append((e, logs))
        )
        _PRETEXT[task] = result, logged
    return _PRETEXT[task]


def _per_epoch_pretext_reference(trial, data):
    """The pretext loop as it was up to commit 566eda6, the reference for the one-`fit` loop: `model.fit`
    for one epoch per epoch on that epoch's pairs, with the validation pairs; Keras' EarlyStopping driven by
    hand. Returns (history, diverged_epoch, final encoder weights)."""
    from study.train import model_cache

    task = pretext.get_task(trial.task)
    params = resolved_task_params(trial)
    training.configure(trial.threads)
    backend.fresh_keras_state(trial.seed)
    train_index, val_index = splits.validation_split(trial, data)
    x_train = data.train.images[train_index]
    val_x, val_y = task.make_batch(
        data.train.images[val_index],
        np.random.default_rng([trial.seed, pretext_phase.STREAM_PRETEXT_VAL]),
        **params,
    )
    loss = pretext_phase._pretext_loss(task)
    model = model_cache.compiled(
        models.model_key(trial, task.head, loss),
        models.build_model(task.head, models.trial_encoder(trial, trial.weights, None)),
        lambda: keras.optimizers.Adam(trial.pretext_lr),
        loss,
    )
    early = (
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=trial.pretext_patience, restore_best_weights=True
        )
        if trial.pretext_patience
        else None
    )
    callbacks = keras.callbacks.CallbackList([early] if early else [], model=model)
    callbacks.on_train_begin()
    val_batches = train_batches.batched(
        (val_x, pretext_phase._as_target(task.head, val_y)), train_batches.EVAL_BATCH_SIZE
    )
    history, batches = [], None
    for epoch in range(trial.pretext_epochs):
        rng = np.random.default_rng([trial.seed, pretext_phase.STREAM_PRETEXT_PAIRS, epoch])
        x, y = task.make_batch(x_train, rng, **params)
        y = pretext_phase._as_target(task.head, y)
        order = np.random.default_rng([trial.seed, pretext_phase.STREAM_PRETEXT_ORDER, epoch]).permutation(
            len(x)
        )
        if batches is None:
            batches = train_batches.IndexedBatches(x, y, trial.pretext_batch_size)
        else:
            batches.set_data(x, y)
        fit = model.fit(
            batches.in_order(order),
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=0,
            validation_data=val_batches,
        )
        logs = {"epoch": epoch + 1, "loss": fit.history["loss"][-1], "val_loss": fit.history["val_loss"][-1]}
        logs = {k: float(v) if k != "epoch" else v for k, v in logs.items()}
        if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
            return history, epoch + 1, []
        history.append(logs)
        callbacks.on_epoch_end(epoch, dict(logs))
        if model.stop_training:
            break
    callbacks.on_train_end()
    return history, None, models.encoder_of(model).get_weights()


@pytest.mark.parametrize(
    "task, changes",
    [
        ("rotation", {}),  # the angle head's dropout: its seed stream runs on across the epochs
        ("missing_patch", {"pretext_epochs": 3}),
        ("rotation4", {"pretext_epochs": 6, "pretext_patience": 1, "pretext_lr": 0.05}),  # stops early
        ("corruption", {"pretext_lr": 1e12}),  # diverges
    ],
)
def test_one_fit_call_per_pretext_phase_equals_the_per_epoch_loop_bit_for_bit(task, changes, data):
    trial = BASE.replace(task=task, **changes)
    history, diverged_epoch, weights = _per_epoch_pretext_reference(trial, data)
    logged = []
    result = training.run_pretext(trial, data, on_epoch=lambda e, logs: logged.append((e, logs)))
    assert result.history == history and result.diverged_epoch == diverged_epoch
    assert [logs for _, logs in logged] == history
    _assert_weights_equal(result.encoder_weights, weights)
    if "pretext_patience" in changes:
        assert result.stopped_epoch is not None and len(history) < trial.pretext_epochs, "did not stop early"
    if changes.get("pretext_lr", 0) > 1:
        assert result.diverged, "the diverging case did not diverge"


@pytest.mark.parametrize("task", ["rotation", "rotation4", "missing_patch", "corruption"])
def test_pretext_phase_per_task(task, data, tmp_path):
    trial = BASE.replace(task=task)
    result, logged = _pretext(task, data)
    assert not result.diverged
    assert [h["epoch"] for h in result.history] == [1, 2] and [e for e, _ in logged] == [1, 2]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["val_loss"]) for h in result.history)
    expected = {
        "rotation": {"mse", "aad", "aad_deg", "aad_circ", "aad_circ_deg", "sd_deg", "sd_circ_deg"},
        "rotation4": {"accuracy", "loss"},
        "missing_patch": {"mse_mean", "mse_sd", "ssim_mean", "ssim_sd", "region_mse", "composite_mse"},
        "corruption": {"mse_mean", "mse_sd", "ssim_mean", "ssim_sd", "region_mse"},
    }
    m = result.metrics
    assert expected[task] <= set(m)
    # Beside every headline: its learning-free reference on the same test pairs, and a computed verdict.
    headline = {"rotation": "aad_circ_deg", "rotation4": "accuracy"}.get(
        task, pretext.get_task(task).headline
    )
    assert m["headline"] == headline and f"ref_{headline}" in m and isinstance(m["learned"], bool)
    assert m["ref_name"] in {"constant", "majority", "chance", "identity", "meanfill"}
    assert m["ratio"] == pytest.approx(m[headline] / m[f"ref_{headline}"])
    numbers = {k: v for k, v in m.items() if not isinstance(v, (bool, str))}
    assert all(math.isfinite(v) for k, v in numbers.items() if k != "learned_p")
    if task == "missing_patch":
        # the black hole is the identity's error inside the hole; mean fill is far better than black
        assert m["ref_meanfill_region_mse"] < m["ref_identity_region_mse"]
        assert m["biharmonic_n"] == min(references.BIHARMONIC_MAX_IMAGES, len(data.test.images))
        assert "ref_biharmonic_region_mse" in m
    fresh = models.build_encoder("small", SIZE, trial.encoder_widths)
    assert [w.shape for w in result.encoder_weights] == [w.shape for w in fresh.get_weights()]
    if pretext.get_task(task).head == "image":
        assert {k: v.shape for k, v in result.examples.items()} == {
            k: (4, SIZE, SIZE, 3) for k in ("inputs", "targets", "outputs")
        }
        assert all(v.dtype == np.uint8 for v in result.examples.values())
        np.testing.assert_array_equal(result.examples["targets"], data.test.images[:4])
        assert not np.array_equal(result.examples["inputs"], result.examples["targets"])
    else:  # rotated inputs with their true and predicted angles
        assert set(result.examples) == {"inputs", "angle_true_deg", "angle_pred_deg"}
        assert result.examples["inputs"].shape == (4, SIZE, SIZE, 3)
        assert result.examples["angle_true_deg"].shape == (4,)
    # What the phase cost: 2 epochs over every training image (the validation split held out), at 3 forward
    # passes each through the model that trained (encoder + this task's head).
    n_train = len(splits.validation_split(trial, data)[0])
    cost = result.cost
    assert cost["device"] == "CPU" and cost["devices"] == trial.threads
    assert 0 < cost["seconds"] < 600 and cost["images_seen"] == 2 * n_train
    trained = models.build_model(pretext.get_task(task).head, models.trial_encoder(trial, "random", None))
    assert cost["flops"] == 3 * models.forward_flops(trained) * 2 * n_train
    result.save(tmp_path / "p")
    loaded = training.PretextResult.load(tmp_path / "p")
    assert loaded.metrics == result.metrics and loaded.history == result.history
    assert loaded.cost == result.cost
    _assert_weights_equal(loaded.encoder_weights, result.encoder_weights)
    assert loaded.examples.keys() == result.examples.keys()


def test_pretext_is_deterministic_and_its_weights_seed_the_finetune(straight, data):
    a, _ = _pretext("rotation4", data)
    b = training.run_pretext(BASE.replace(task="rotation4"), data)
    assert a.metrics == b.metrics and a.history == b.history
    _assert_weights_equal(a.encoder_weights, b.encoder_weights)
    tuned = training.run_finetune(
        BASE.replace(task="rotation4", finetune_epochs=1), data, encoder_weights=a.encoder_weights
    )
    baseline_first_epoch = straight[0].history[0]  # same seed, split, order and head init; random encoder
    assert tuned.history[0]["val_loss"] != baseline_first_epoch["val_loss"]


def test_pretext_pairs_made_ahead_are_the_pairs_made_in_line(data, monkeypatch):
    """Pairs are made one epoch ahead in a thread; after an early stop the pending epoch is dropped and the
    test pairs are still the seed's (the scored inputs equal a direct `make_batch`)."""

    class StopAfterFirstEpoch(keras.callbacks.EarlyStopping):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            self.model.stop_training = True

    trial = BASE.replace(task="missing_patch", pretext_epochs=3, pretext_patience=2)
    full = training.run_pretext(trial.replace(pretext_patience=0), data)
    monkeypatch.setattr(keras.callbacks, "EarlyStopping", StopAfterFirstEpoch)
    stopped = training.run_pretext(trial, data)
    assert len(full.history) == 3 and len(stopped.history) == 1
    assert stopped.history[0] == full.history[0]
    task = pretext.get_task("missing_patch")
    test_x, test_y = task.make_batch(
        data.test.images,
        np.random.default_rng([trial.seed, pretext_phase.STREAM_PRETEXT_TEST]),
        **resolved_task_params(trial),
    )
    for result in (full, stopped):
        np.testing.assert_array_equal(result.examples["inputs"], test_x[:4])
        np.testing.assert_array_equal(result.examples["targets"], test_y[:4])


def test_pretext_divergence_is_reported_not_raised(data, monkeypatch):
    def nan_targets(images, rng, **params):
        return images.copy(), np.full(len(images), np.nan, np.float32)

    task = pretext.PretextTask("nan_angle", "NaN targets (test)", "angle", "mse", make_batch=nan_targets)
    monkeypatch.setitem(pretext.TASKS, "nan_angle", task)
    result = training.run_pretext(BASE.replace(task="nan_angle"), data)
    assert result.diverged and result.diverged_epoch == 1
    assert result.metrics == {} and result.encoder_weights == [] and result.history == []


def test_pretext_rejects_the_baseline_arm(data):
    with pytest.raises(ValueError, match="baseline arm"):
        training.run_pretext(BASE, data)


def _halving_task(calls: list) -> pretext.PretextTask:
    """A task with a trivial training step of its own (`PretextTask.train`): each epoch it halves the
    encoder's weights `halving_factor` times and reports a loss drawn from its own seeded stream."""

    def halve(run: train_results.PretextRun) -> training.PretextResult:
        calls.append({"run": run, "initial": run.encoder.get_weights()})
        history = []
        for epoch in range(run.trial.pretext_epochs):
            factor = 0.5 ** run.params["halving_factor"]
            run.encoder.set_weights([w * factor for w in run.encoder.get_weights()])
            loss = float(np.random.default_rng([run.trial.seed, 91, epoch]).random())
            history.append({"epoch": epoch + 1, "loss": loss, "val_loss": loss})
            if run.on_epoch is not None:
                run.on_epoch(epoch + 1, dict(history[-1]))
        metrics = {"shrink": factor ** len(history), "headline": "shrink", "learned": False}
        return training.PretextResult(run.trial.task, run.encoder.get_weights(), metrics, history)

    return pretext.PretextTask(
        "halving",
        "Halving (test)",
        loss="none",
        params=(pretext.Param("halving_factor", int, 1, minimum=1),),
        train=halve,
        metrics=("shrink",),
        headline="shrink",
    )


def test_a_task_with_its_own_training_step_runs_through_the_pretext_cache(data, monkeypatch, tmp_path):
    """`PretextTask.train` replaces the batch loop: it gets the trial's set-up and its result is cached,
    loaded and fine-tuned from like any other pretext."""
    from study.trainables import cached_pretext

    calls: list = []
    monkeypatch.setitem(pretext.TASKS, "halving", _halving_task(calls))
    trial = BASE.replace(task="halving", pretext_cache_dir=str(tmp_path / "cache"), finetune_epochs=1)
    epochs: list = []
    result, reused, key = cached_pretext(
        trial, data, on_epoch=lambda e, logs: epochs.append((e, logs["loss"]))
    )
    assert not reused and [e for e, _ in epochs] == [1, 2] and len(calls) == 1
    run = calls[0]["run"]
    train_index, val_index = splits.validation_split(trial, data)
    np.testing.assert_array_equal(run.train_images, data.train.images[train_index])
    np.testing.assert_array_equal(run.val_images, data.train.images[val_index])
    np.testing.assert_array_equal(run.test_images, data.test.images)
    assert run.params == {"halving_factor": 1} and run.trial == trial
    _assert_weights_equal(result.encoder_weights, [w * 0.25 for w in calls[0]["initial"]])
    # the initial encoder is the trial's, built after reseeding: a second run starts from the same weights
    again, reused_again, key_again = cached_pretext(trial, data)
    assert reused_again and key_again == key and len(calls) == 1
    _assert_weights_equal(again.encoder_weights, result.encoder_weights)
    assert again.metrics == {"shrink": 0.25, "headline": "shrink", "learned": False}
    # its parameter is part of the cache key; the fine-tune starts from its encoder unchanged
    assert cached_pretext(trial.replace(halving_factor=2), data)[2] != key
    finetune = training.run_finetune(trial, data, encoder_weights=again.encoder_weights)
    assert len(finetune.history) == 1


def test_a_training_step_must_return_a_pretext_result_of_its_task(data, monkeypatch):
    task = _halving_task([])
    wrong = dataclasses.replace(task, train=lambda run: task.train(run).encoder_weights)
    monkeypatch.setitem(pretext.TASKS, "halving", wrong)
    with pytest.raises(TypeError, match="must return a study.train.results.PretextResult"):
        training.run_pretext(BASE.replace(task="halving", pretext_epochs=1), data)


def test_the_model_cache_key_follows_the_model_fields():
    from study.spec.config import MODEL, fields_of

    key = models.model_key(BASE, "image", "mse")
    for name in fields_of(MODEL):
        value = getattr(BASE, name)
        other = (
            (*value, 4) if isinstance(value, tuple) else (not value if isinstance(value, bool) else value * 2)
        )
        assert models.model_key(BASE.replace(**{name: other}), "image", "mse") != key, name
    same = BASE.replace(lr=0.5, seed=3, task="rotation", pretext_epochs=9, threads=2)
    assert models.model_key(same, "image", "mse") == key
    assert models.model_key(BASE, "angle", "mse") != key


# ----------------------------------------------------------------------------------------------- set-up
@tensorflow_only
def test_configure_tensorflow_is_idempotent_and_refuses_other_threads():
    import tensorflow as tf

    training.configure_tensorflow(1)  # same values: fine
    assert tf.config.threading.get_intra_op_parallelism_threads() == 1
    assert tf.config.threading.get_inter_op_parallelism_threads() == 1
    with pytest.raises(RuntimeError, match=r"cannot switch to threads=2"):
        training.configure_tensorflow(2)
    with pytest.raises(ValueError, match="threads"):
        training.configure_tensorflow(0)


# --------------------------------------------------------------------------------------- model cache
def test_configure_is_idempotent_and_refuses_other_threads_once_the_backend_started():
    training.configure(1)
    keras.ops.convert_to_numpy(keras.ops.ones(2) * 2)  # the backend has started
    training.configure(1)  # same values: fine
    with pytest.raises(RuntimeError, match=r"cannot switch to threads=2"):
        training.configure(2)
    with pytest.raises(ValueError, match="threads"):
        training.configure(0)
    if keras.backend.backend() == "jax":  # one thread: XLA's CPU kernels single-threaded
        assert set(backend.jax_flags(1, True)) <= set(os.environ["XLA_FLAGS"].split())
        assert "--xla_cpu_multi_thread_eigen=false" in backend.jax_flags(1, True)


def test_the_backend_and_its_version_are_named():
    name, version = backend.version().split(" ")
    assert name == keras.backend.backend() == backend.name() and version[0].isdigit()


@contextlib.contextmanager
def _variables_created(names):
    """Appends the name of every variable created inside to `names` (TensorFlow; other backends: none)."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    def creator(next_creator, **kwargs):
        names.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


def test_a_remembered_compiled_model_gives_the_results_of_a_new_one(data, monkeypatch):
    """Seed 0, then another task/seed/lr of the same architectures, then seed 0 again in this process: the
    third run trains the remembered models (no new compile, hence no re-tracing) and matches the first bit
    for bit, as does a run with the cache off."""
    from study.train import model_cache

    def trial_pair(trial):
        pre = training.run_pretext(trial, data)
        fine = training.run_finetune(
            trial.replace(finetune_epochs=3), data, encoder_weights=pre.encoder_weights
        )
        return pre, fine

    monkeypatch.setenv("STUDY_MODEL_CACHE", "4")
    model_cache.clear()
    rotation = BASE.replace(task="rotation", pretext_patience=1)
    first = trial_pair(rotation)
    assert model_cache.stats == {"hits": 0, "misses": 2}
    trial_pair(rotation.replace(seed=3, lr=0.05, pretext_lr=0.01))  # moves every variable elsewhere
    created = []
    with _variables_created(created):
        again = trial_pair(rotation)
    assert model_cache.stats == {"hits": 4, "misses": 2}
    # the fresh models built for the remembered ones created no weights (`model_cache.building`)
    weights = {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"}
    assert not weights & set(created)
    assert created or keras.backend.backend() != "tensorflow"
    # TensorFlow's kernel cache cleared before every phase (as happens every ~20 phases of the demo and
    # every phase of ResNet50): the remembered models' functions are re-instantiated, with the same results
    monkeypatch.setattr(model_cache, "CLEAR_KERNELS_AFTER", 1)
    cleared = trial_pair(rotation)
    assert model_cache.stats == {"hits": 6, "misses": 2}
    monkeypatch.setattr(model_cache, "CLEAR_KERNELS_AFTER", 10**12)
    monkeypatch.setenv("STUDY_MODEL_CACHE", "0")
    model_cache.clear()
    uncached = trial_pair(rotation)
    assert model_cache.stats == {"hits": 0, "misses": 2}
    for other in (again, cleared, uncached):
        assert other[0].history == first[0].history and other[0].metrics == first[0].metrics
        _assert_weights_equal(other[0].encoder_weights, first[0].encoder_weights)
        assert other[1].history == first[1].history and other[1].regimes == first[1].regimes
        _assert_weights_equal(other[1].model_weights, first[1].model_weights)


def test_a_remembered_model_resumes_from_saved_state_exactly(straight, data, tmp_path, monkeypatch):
    """Resume (weights and optimizer state loaded into a remembered model that trained another seed) ends
    where the uninterrupted run ends."""
    from study.train import model_cache

    monkeypatch.setenv("STUDY_MODEL_CACHE", "4")
    result, _ = straight

    class Interrupted(Exception):
        pass

    def stop_after_three(epoch, logs, save_state):
        if epoch == 3:
            save_state(tmp_path / "state")
            raise Interrupted

    with pytest.raises(Interrupted):
        training.run_finetune(BASE, data, on_epoch=stop_after_three)
    training.run_finetune(BASE.replace(seed=5, finetune_epochs=2), data)
    hits = model_cache.stats["hits"]
    resumed = training.run_finetune(BASE, data, resume_dir=tmp_path / "state")
    assert model_cache.stats["hits"] == hits + 1
    assert resumed.history == result.history
    _assert_weights_equal(resumed.model_weights, result.model_weights)


def test_a_labels_csv_copy_of_a_folder_dataset_gives_the_same_results(tiny_dataset, tmp_path):
    """The same images labelled by a CSV (same splits) train to the same pretext and fine-tune results as the
    folder layout: only the fingerprint (which covers the CSV's labels) differs."""
    import csv

    from study.data import DataSource, load_dataset

    folder = load_dataset(tiny_dataset, SIZE, cache_dir=tmp_path / "cache")
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "benign_malignant", "split"])
        for split in ("train", "test"):
            for path in getattr(folder, split).paths:
                w.writerow([path, path.split("/")[1], split])
    from_csv = load_dataset(
        DataSource(str(table), images=str(tiny_dataset)), SIZE, cache_dir=tmp_path / "cache"
    )
    assert from_csv.fingerprint != folder.fingerprint
    trial = BASE.replace(
        task="missing_patch", patch_size=8, pretext_epochs=1, finetune_epochs=2, label_fraction=0.5
    )
    results = []
    for data in (folder, from_csv):
        pre = training.run_pretext(trial, data)
        fine = training.run_finetune(trial, data, encoder_weights=pre.encoder_weights)
        results.append((pre, fine))
    (pre_a, fine_a), (pre_b, fine_b) = results
    timeless = [{k: v for k, v in p.metrics.items() if not k.endswith("_seconds")} for p in (pre_a, pre_b)]
    assert timeless[0] == timeless[1]
    _assert_weights_equal(pre_a.encoder_weights, pre_b.encoder_weights)
    assert fine_a.history == fine_b.history and fine_a.regimes == fine_b.regimes
    assert _probe_without_time(fine_a.probe) == _probe_without_time(fine_b.probe)
    np.testing.assert_array_equal(fine_a.train_index, fine_b.train_index)
    _assert_weights_equal(fine_a.model_weights, fine_b.model_weights)


def test_saved_arrays_come_back_in_order_with_their_dtypes_and_shapes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        np.array(7, np.int64),  # an optimizer's iteration count
        rng.standard_normal(5).astype(np.float32),
        np.array([3, 0], np.uint32),  # a dropout seed state
        np.zeros((0, 4), np.float32),
        rng.standard_normal((2, 2)),
    ]
    path = tmp_path / "state.npz"
    train_results.save_arrays(path, arrays)
    back = train_results.load_arrays(path)
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    with np.load(path) as z:  # one member per dtype, not per array
        assert len(z.files) == 5
    train_results.save_arrays(path, [])
    assert train_results.load_arrays(path) == []
    # a checkpoint written before (one member per array) still loads
    np.savez(path, **{f"a{i:04d}": a for i, a in enumerate(arrays)})
    for a, b in zip(arrays, train_results.load_arrays(path)):
        np.testing.assert_array_equal(a, b)
