"""The fine-tune phase of a trial (`run_finetune`): encoder + classification head trained for the full
`trial.finetune_epochs`, evaluated every epoch, early stopping replayed afterwards for every patience.

The phase trains in one `fit` call; its per-epoch work (evaluation of the validation and test images in one
pass through the model's compiled predict function, the history, `callbacks`, `on_epoch`'s reports and
checkpoints) runs in an epoch-end callback. Keras' set-up of a `fit` or `predict` call costs ~20 ms, which a
call per epoch paid ~30 times per demo trial; the numbers are bitwise those of a call per epoch
(tests/train/test_training.py keeps that loop as the reference). Before the first epoch a linear probe
(`study.train.probe`) scores the encoder the fine-tune starts from. The phase knows nothing about Ray.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from study.spec.config import TrialConfig, regime_name
from study.train import backend, model_cache, models, regimes
from study.train import batches as batching
from study.train.batches import EpochHooks, indexed_batches
from study.train.metrics import classification_metrics
from study.train.probe import linear_probe
from study.train.results import EpochLogs, FinetuneResult
from study.train.splits import check_data, finetune_split
from study.train.state import SaveState, load_state, save_state

STREAM_FINETUNE_ORDER = 21  # order of the fine-tune training images within an epoch


def run_finetune(
    trial: TrialConfig,
    data: Any,
    encoder_weights: Sequence[np.ndarray] | None = None,
    on_epoch: Callable[[int, EpochLogs, SaveState], None] | None = None,
    resume_dir: str | os.PathLike | None = None,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FinetuneResult:
    """Fine-tune encoder + classification head for the full `trial.finetune_epochs`; replay early stopping.

    Encoder: `encoder_weights` (from a pretext phase) or `trial.weights` (`random`/`imagenet`). Adam(`lr`),
    binary cross-entropy, `batch_size`; training order per epoch from `default_rng([seed,
    STREAM_FINETUNE_ORDER, epoch])`. After every epoch the history gets loss, validation loss and metrics
    and TEST metrics (recorded, never used to choose an epoch), then `on_epoch(epoch, logs, save_state)` is
    called; `save_state(dir)` writes weights, optimizer state and history so that
    `run_finetune(..., resume_dir=dir)` continues with the next epoch and ends bitwise-identical to a run
    without interruption (same threads required).

    Regimes: for each `p` in `trial.patiences`, `regimes.replay_early_stopping` on the validation losses
    gives the epoch Keras' `EarlyStopping(patience=p, start_from_epoch, restore_best_weights)` would stop
    at and whose weights it would keep (`epoch_used`); the regime's result is that epoch's test metrics.
    After a divergence at epoch d, a regime whose rule fires on or before epoch d-1 is valid (it would have
    stopped before diverging, `diverged=False`); the others get `diverged=True`, `stop_epoch=d` and NaN
    metrics.

    `callbacks`: Keras callbacks driven across the whole loop (`on_train_begin` once, `on_epoch_end` with
    the epoch's logs, `on_train_end`); if one sets `model.stop_training` the loop ends there. Meant for
    tests (a real `EarlyStopping`) and tools; their state is not saved by `save_state`.
    """
    backend.configure(trial.threads)
    check_data(trial, data)
    backend.fresh_keras_state(trial.seed)

    train_index, val_index = finetune_split(trial, data)
    y_train, y_val, y_test = (
        _binary(data.train.labels[train_index]),
        data.train.labels[val_index],
        data.test.labels,
    )
    # The training rows, and the validation and test images (evaluated together), taken from the dataset by
    # row: copied once per phase when small (eval batches as tensors: numpy inputs would be converted again at
    # every evaluation), gathered batch by batch when large (no copy of a split of the shared, mapped dataset).
    batches = indexed_batches(
        data.train.images, _binary(data.train.labels), trial.batch_size, rows=train_index
    )
    eval_batches = batching.eval_batches([(data.train.images, val_index), (data.test.images, None)])
    n_train = len(train_index)
    model = _finetune_model(trial, encoder_weights, resume_dir)
    if resume_dir is not None:
        history, probe_scores = load_state(model, Path(resume_dir), trial, data)
    else:
        # Before any fine-tune step: the encoder as the pretext phase left it (or as initialised).
        # The training images in their own order, from the batches the fine-tune trains on (no second copy
        # of the training set: at 224 px that is ~150 KB per image).
        train_in_order = batches.in_order(np.arange(n_train))
        history = []
        probe_scores = _probe_encoder(model, train_in_order, (y_train, y_val, y_test), eval_batches)
    labels = (y_val, y_test)
    feeds = (batches, n_train, eval_batches)
    epochs = _Epochs(model, trial, data, feeds, labels, (history, probe_scores), on_epoch)
    driven = keras.callbacks.CallbackList(list(callbacks), model=model)
    driven.on_train_begin()
    epochs.run(driven)
    driven.on_train_end()
    return FinetuneResult(
        history=history,
        regimes=replay_regimes(trial, history, epochs.diverged_epoch),
        diverged=epochs.diverged_epoch is not None,
        diverged_epoch=epochs.diverged_epoch,
        model_weights=model.get_weights(),
        train_index=train_index,
        val_index=val_index,
        timings=epochs.timings,
        probe=probe_scores,
    )


def _finetune_model(
    trial: TrialConfig, encoder_weights: Sequence[np.ndarray] | None, resume_dir: Any
) -> keras.Model:
    """The classifier, compiled (a remembered one from `model_cache` when it can), its encoder set to
    `encoder_weights` when given."""
    # On resume or with pretext weights the initial encoder weights are overwritten: skip the ImageNet file.
    overwritten = encoder_weights is not None or resume_dir is not None

    def build() -> keras.Model:
        encoder = models.trial_encoder(
            trial, "random" if overwritten else trial.weights, None if overwritten else trial.weights_path
        )
        return models.build_model("classification", encoder, mixed_precision=trial.mixed_precision)

    model = model_cache.obtain(
        models.model_key(trial, "classification", "binary_crossentropy"),
        build,
        lambda: keras.optimizers.Adam(trial.lr),
        backend.loss("binary_crossentropy"),
        deferrable=overwritten or trial.weights == "random",
    )
    if encoder_weights is not None:
        models.set_encoder_weights(models.encoder_of(model), encoder_weights)
    return model


class _Epochs:
    """The fine-tune's epochs in one `fit` call (each call costs ~20 ms of Keras set-up); the per-epoch work
    (evaluation, history, callbacks, `on_epoch` with its `save_state`) runs in `EpochHooks`, between them."""

    def __init__(self, model, trial, data, feeds, labels, state, on_epoch) -> None:
        self.model, self.trial, self.data, self.on_epoch = model, trial, data, on_epoch
        self.batches, self.n_train, self.eval_batches = feeds  # training batches, images, evaluation batches
        self.y_val, self.y_test = labels
        self.history, self.probe_scores = state  # appended to: the caller's history
        self.diverged_epoch: int | None = None
        self.timings: list[dict[str, float]] = []
        self._started: list[float] = []
        self._bce = keras.losses.BinaryCrossentropy()
        self._driven: Any = None

    def save_state(self, directory: str | os.PathLike) -> None:
        save_state(self.model, Path(directory), self.trial, self.data, self.history, self.probe_scores)

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.trial.seed, STREAM_FINETUNE_ORDER, epoch])
        return rng.permutation(self.n_train)

    def run(self, driven: keras.callbacks.CallbackList) -> None:
        self._driven = driven
        if len(self.history) < self.trial.finetune_epochs:
            self.model.fit(
                self.batches.in_order(self.order(len(self.history))),
                epochs=self.trial.finetune_epochs,
                initial_epoch=len(self.history),
                shuffle=False,
                verbose=0,
                callbacks=[EpochHooks(self.epoch_begin, self.epoch_end)],
            )

    def epoch_begin(self, epoch: int) -> None:
        # Keras starts the epoch's dataset iterator after `on_epoch_begin`: it reads this epoch's order.
        self.batches.in_order(self.order(epoch))
        self._started.append(time.perf_counter())

    def epoch_end(self, epoch: int, fit_logs: EpochLogs) -> None:
        fitted = time.perf_counter()
        loss = float(fit_logs["loss"])
        p_eval = _predict_proba(self.model, self.eval_batches)
        p_val, p_test = p_eval[: len(self.y_val)], p_eval[len(self.y_val) :]
        self.timings.append(
            {"epoch": epoch + 1, "fit_s": fitted - self._started[-1], "eval_s": time.perf_counter() - fitted}
        )
        logs = self._logs(epoch, loss, p_val, p_test)
        if logs is None:
            self.diverged_epoch = epoch + 1
            self.model.stop_training = True
            return
        self.history.append(logs)
        self.model.stop_training = False
        self._driven.on_epoch_end(epoch, dict(logs))
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, dict(logs), self.save_state)
        # `fit` ends after this epoch if a callback set `model.stop_training`

    def _logs(self, epoch: int, loss: float, p_val: np.ndarray, p_test: np.ndarray) -> EpochLogs | None:
        """The epoch's history entry; None when it diverged."""
        if not (math.isfinite(loss) and np.all(np.isfinite(p_val)) and np.all(np.isfinite(p_test))):
            return None
        logs: EpochLogs = {"epoch": epoch + 1, "loss": loss}
        logs.update(_prefixed("val_", classification_metrics(self.y_val, p_val)))
        # Keras' own loss on the validation set: the number a fit(validation_data=...) run would monitor.
        logs["val_loss"] = float(self._bce(_binary(self.y_val), p_val[:, None]))
        logs.update(_prefixed("test_", classification_metrics(self.y_test, p_test)))
        return logs if math.isfinite(logs["val_loss"]) else None


# Feature extractors (input -> pooled encoder features) of the remembered models, built once per model, so
# a kept model's probe is not re-traced every trial.
_FEATURE_MODELS: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


def _probe_encoder(model: keras.Model, train_batches, labels, eval_batches) -> dict[str, float]:
    """Linear probe (`study.train.probe`) on the classifier's pooled encoder features, before fine-tuning.

    `train_batches`: the training images (with labels, ignored by `predict`); `labels`: `(y_train, y_val,
    y_test)`; `eval_batches`: the validation then the test images.
    """
    started = time.perf_counter()
    features = _FEATURE_MODELS.get(model)
    if features is None:
        features = keras.Model(model.input, model.get_layer("gap").output, name="pooled_features")
        _FEATURE_MODELS[model] = features
    y_train, y_val, y_test = labels
    f_train = np.asarray(batching.predict_batches(features, train_batches), np.float64)
    f_eval = np.asarray(batching.predict_batches(features, eval_batches), np.float64)
    n_val = len(y_val)
    scores = linear_probe(
        (f_train, np.asarray(y_train).reshape(-1)), (f_eval[:n_val], y_val), (f_eval[n_val:], y_test)
    )
    return {**scores, "probe_s": time.perf_counter() - started}


def replay_regimes(
    trial: TrialConfig, history: list[EpochLogs], diverged_epoch: int | None
) -> dict[str, dict[str, Any]]:
    """Per `regime_name(p)`: where early stopping with patience `p` stops and the test metrics it keeps.

    `history`: the completed epochs (1-based `epoch`, `val_loss`, `test_<metric>`). Keys per regime:
    `patience`, `stop_epoch`, `best_epoch`, `epoch_used`, `diverged`, `val_loss`, `test_<metric>`.
    After a divergence the rule is replayed with a NaN validation loss for the diverged epoch (NaN never
    improves): a regime is valid when it stops within the completed epochs — Keras would have ended training
    there, before the diverged epoch ran; otherwise it is diverged, with NaN metrics.
    """
    val_losses = [float(h["val_loss"]) for h in history]
    if diverged_epoch is not None:
        val_losses.append(math.nan)
    test_keys = (
        [k for k in history[0] if k.startswith("test_")]
        if history
        else [f"test_{k}" for k in classification_metrics([0, 1], [0.25, 0.75])]
    )
    out: dict[str, dict] = {}
    for p in trial.patiences:
        entry: dict[str, Any] = {
            "patience": p,
            "stop_epoch": None,
            "best_epoch": None,
            "epoch_used": None,
            "diverged": False,
            "val_loss": math.nan,
        }
        if val_losses:  # empty only when a callback stopped the loop before any epoch
            r = regimes.replay_early_stopping(
                val_losses,
                p,
                start_from_epoch=trial.start_from_epoch,
                restore_best_weights=trial.restore_best_weights,
            )
            if diverged_epoch is not None and not r["stopped_early"]:
                entry.update(stop_epoch=diverged_epoch, best_epoch=r["best_epoch"], diverged=True)
                entry.update({k: math.nan for k in test_keys})
            else:
                used = history[r["epoch_used"] - 1]
                entry.update(
                    stop_epoch=r["stop_epoch"],
                    best_epoch=r["best_epoch"],
                    epoch_used=r["epoch_used"],
                    val_loss=used["val_loss"],
                )
                entry.update({k: used[k] for k in test_keys})
        out[regime_name(p)] = entry
    return out


def _prefixed(prefix: str, scores: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in scores.items()}


def _predict_proba(model: keras.Model, batches: Sequence[Any]) -> np.ndarray:
    """P(malignant) `(N,)` float64 from the sigmoid head, for `batches` (`batches.tensor_batches`)."""
    return np.asarray(batching.predict_batches(model, batches), np.float64).reshape(-1)


def _binary(labels: np.ndarray) -> np.ndarray:
    """Labels 0/1 `(N,)` -> float32 `(N, 1)`, the shape of the sigmoid output."""
    return np.asarray(labels, np.float32).reshape(-1, 1)
