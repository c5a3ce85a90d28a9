"""The pretext phase of a trial (`run_pretext`): the trial's encoder and its task's head trained on pairs the
task's batch transform makes fresh every epoch, then scored on test pairs beside learning-free references.

A task with a declared step (`PretextTask.step`, `study.tasks.steps`) is trained by the implementation
registered for the declaration's type in `DECLARED_STEPS` (a `TwoViewStep`: `study.train.contrastive`); a
task with a step of its own (`PretextTask.train`) by that step. Both get the same set-up as a `PretextRun`.
The phase knows nothing about Ray: the trainable passes `on_epoch` and stores what it returns.

Reproducibility: each phase reseeds Python, NumPy and Keras from `trial.seed` (`backend.fresh_keras_state`);
all data randomness is derived per epoch, `np.random.default_rng([seed, stream, epoch])`, never drawn from a
running generator. The stream ids are below. Models come through `study.train.model_cache`: a reused worker
trains a remembered, already traced model of the same architecture, set to exactly the state a new one
would start in (same results, no re-tracing).

Divergence: a non-finite training or validation loss stops the phase without raising. The diverged epoch is
not added to the history (its numbers are garbage) and `on_epoch` is not called for it. It is detected at
the end of the epoch: the epoch's loss is a running mean, so one non-finite batch makes it non-finite.
(Keras' `TerminateOnNaN` would stop mid-epoch, but a callback with batch hooks makes Keras fetch the logs
after every batch, which cost ~40 % of a small model's epoch time here.)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from study.spec.config import TrialConfig, resolved_task_params
from study.tasks import references, registry
from study.tasks.registry import PretextTask
from study.tasks.steps import TwoViewStep
from study.train import backend, contrastive, model_cache, models
from study.train.batches import EVAL_BATCH_SIZE, EpochHooks, batched, indexed_batches, predict_chunked
from study.train.results import EpochLogs, PretextResult, PretextRun
from study.train.splits import check_data, validation_split

# Random streams: `default_rng([seed, STREAM, epoch])` per epoch, `default_rng([seed, STREAM])` when fixed.
STREAM_PRETEXT_PAIRS = 11  # corrupted training inputs, fresh each epoch
STREAM_PRETEXT_ORDER = 12  # order of the training pairs within an epoch
STREAM_PRETEXT_VAL = 13  # validation pairs, generated once per trial
STREAM_PRETEXT_TEST = 14  # test pairs: fixed per seed, identical for every arm/run with that seed and task

#: The implementation of each kind of declared step (`PretextTask.step`), by the declaration's type:
#: `impl(task, run: PretextRun) -> PretextResult`.
DECLARED_STEPS: dict[type, Callable[[PretextTask, PretextRun], PretextResult]] = {
    TwoViewStep: contrastive.run_two_view_step,
}


def run_pretext(
    trial: TrialConfig,
    data: Any,
    on_epoch: Callable[[int, EpochLogs], None] | None = None,
) -> PretextResult:
    """Train encoder + task head on `trial.task` from `data.train` images; evaluate on `data.test` images.

    Pairs come from `registry.get_task(trial.task).make_batch`, regenerated every epoch; validation pairs
    (the `val_fraction` split) once per trial; test pairs from `default_rng([seed, STREAM_PRETEXT_TEST])`,
    so every run with the same seed and task is scored on the same corruptions. Loss by head: MSE on angle/360
    (`angle`), sparse categorical cross-entropy (`rotation4`), MSE in preprocessed (BGR, mean-centred)
    units (`image`). Adam(`pretext_lr`), `pretext_epochs`, `pretext_batch_size`; with
    `pretext_patience`, Keras' `EarlyStopping(val_loss, restore_best_weights=True)`.

    `on_epoch(epoch, logs)` is called after each completed epoch (1-based) with the history entry.

    A task with a declared step (`PretextTask.step`: its implementation in `DECLARED_STEPS`) or a training
    step of its own (`PretextTask.train`) gets the same set-up (parameters resolved, data checked, generators
    reseeded, validation split, the trial's encoder) as a `PretextRun`, and the step returns the result;
    `make_batch`, the head and the loop below are then not used.

    The result's `cost` holds the phase's wall seconds, device and estimated FLOPs (`PretextResult`).
    """
    started = time.perf_counter()
    result = _train_pretext(trial, data, on_epoch)
    cost = {**result.cost, "seconds": time.perf_counter() - started, **backend.device_in_use(trial.threads)}
    return dataclasses.replace(result, cost=cost)

def _train_pretext(
    trial: TrialConfig, data: Any, on_epoch: Callable[[int, EpochLogs], None] | None
) -> PretextResult:
    """`run_pretext` without the cost's time and device: the result's `cost` holds `images_seen` and
    `flops` (the standard loop's, or what a task's step put there)."""
    backend.configure(trial.threads)
    if trial.task == "none":
        raise ValueError("task='none' is the baseline arm and has no pretext phase; call run_finetune only")
    task = registry.get_task(trial.task)
    params = resolved_task_params(trial)
    check_data(trial, data)
    backend.fresh_keras_state(trial.seed)

    train_index, val_index = validation_split(trial, data)
    x_train = data.train.images[train_index]
    if task.step is not None or task.train is not None:
        return _run_own_step(task, trial, params, data, x_train, data.train.images[val_index], on_epoch)
    pairs = _Pairs(task, params, trial.seed, x_train, data.test.images, trial.pretext_epochs)
    try:
        val_x, val_y = task.make_batch(
            data.train.images[val_index], np.random.default_rng([trial.seed, STREAM_PRETEXT_VAL]), **params
        )
        model = _pretext_model(trial, task)
        fit = _fit(model, trial, pairs, val_x, _as_target(task.head, val_y), len(x_train), on_epoch)
        if fit.diverged_epoch is None:
            test_x, test_y = pairs.test()
    finally:
        pairs.close()
    cost = _cost(model, len(x_train))
    if fit.diverged_epoch is not None:
        return PretextResult(
            trial.task,
            [],
            {},
            fit.history,
            diverged=True,
            diverged_epoch=fit.diverged_epoch,
            cost=cost(fit.diverged_epoch),
        )
    # Image outputs are converted to uint8 chunk by chunk: float32 outputs for a whole test set at 224 px
    # would take 0.6 MB per image.
    pred = predict_chunked(model, test_x, models.to_uint8 if task.head == "image" else None)
    if pred is None:  # non-finite outputs: the weights went bad although the losses stayed finite
        return PretextResult(
            trial.task,
            [],
            {},
            fit.history,
            diverged=True,
            diverged_epoch=len(fit.history),
            stopped_epoch=fit.stopped_epoch,
            cost=cost(len(fit.history)),
        )
    scores, examples = _scores(task, params, trial.seed, data.test.images, test_x, test_y, pred)
    return PretextResult(
        trial.task,
        models.encoder_of(model).get_weights(),
        {k: v if isinstance(v, (bool, str)) else float(v) for k, v in scores.items()},
        fit.history,
        examples=examples,
        stopped_epoch=fit.stopped_epoch,
        cost=cost(len(fit.history)),
    )


class _Pairs:
    """Each epoch's training pairs (targets in the head's shape), made one epoch ahead in a background
    thread while the model builds, traces and trains (TensorFlow releases the GIL), so a GPU does not wait
    for the CPU's corruptions. Each epoch's pairs come from their own generator, so they are the same arrays
    as made in line. `test()`: the test pairs, `default_rng([seed, STREAM_PRETEXT_TEST])`."""

    def __init__(self, task: PretextTask, params: dict[str, Any], seed: int, x_train, test_images, epochs):
        self.task, self.params, self.seed = task, params, seed
        self.x_train, self.test_images, self.epochs = x_train, test_images, epochs
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="pretext-inputs")
        self._upcoming, self._upcoming_index = self._ahead.submit(self._inputs, 0), 0

    def _inputs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch `i`'s training pairs; `i == epochs`: the test pairs."""
        if i == self.epochs:
            return self.task.make_batch(
                self.test_images, np.random.default_rng([self.seed, STREAM_PRETEXT_TEST]), **self.params
            )
        rng = np.random.default_rng([self.seed, STREAM_PRETEXT_PAIRS, i])
        x, y = self.task.make_batch(self.x_train, rng, **self.params)
        return x, _as_target(self.task.head, y)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The pairs made ahead (epoch 0's first), and the job for the epoch after them started."""
        pairs = self._upcoming.result()
        self._upcoming_index += 1
        self._upcoming = self._ahead.submit(self._inputs, self._upcoming_index)
        return pairs

    def test(self) -> tuple[np.ndarray, np.ndarray]:
        # after an early stop the job ahead made an epoch that will not run
        return self._upcoming.result() if self._upcoming_index == self.epochs else self._inputs(self.epochs)

    def close(self) -> None:
        self._ahead.shutdown(wait=False, cancel_futures=True)


def _pretext_model(trial: TrialConfig, task: PretextTask) -> keras.Model:
    """The trial's encoder with the task's head, compiled (a remembered one from `model_cache` if it can)."""
    loss = _pretext_loss(task)

    def build() -> keras.Model:
        encoder = models.trial_encoder(trial, trial.weights, trial.weights_path)
        return models.build_model(task.head, encoder, mixed_precision=trial.mixed_precision)

    return model_cache.obtain(
        models.model_key(trial, task.head, loss),
        build,
        lambda: keras.optimizers.Adam(trial.pretext_lr),
        loss,
        deferrable=trial.weights == "random",
    )


def _cost(model: keras.Model, n_train: int) -> Callable[[int], dict[str, float]]:
    """`cost(epochs_run)`: the training images drawn and the estimated training FLOPs."""
    flops_per_image = models.forward_flops(model)

    def cost(epochs_run: int) -> dict[str, float]:
        seen = epochs_run * n_train
        flops = models.TRAIN_FLOPS_FACTOR * flops_per_image * seen
        return {"images_seen": float(seen), "flops": float(flops)}

    return cost


@dataclass
class _Fitted:
    """What the epochs left: the completed epochs' logs, the epoch that diverged, where early stopping
    ended."""

    history: list[EpochLogs]
    diverged_epoch: int | None = None
    stopped_epoch: int | None = None


def _fit(model, trial, pairs: _Pairs, val_x, val_y, n_train: int, on_epoch) -> _Fitted:
    """Train `model` for `trial.pretext_epochs` in one `fit` call (each call costs ~20 ms of Keras set-up,
    plus its validation set-up); the per-epoch work runs in `EpochHooks`, between the epochs. With
    `pretext_patience`, Keras' `EarlyStopping(val_loss, restore_best_weights=True)`."""
    early = (
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=trial.pretext_patience, restore_best_weights=True
        )
        if trial.pretext_patience
        else None
    )
    driven = keras.callbacks.CallbackList([early] if early else [], model=model)
    driven.on_train_begin()
    fitted = _Fitted([])
    # Converted to tensors once (numpy validation data would be converted again every epoch).
    val_batches = batched((val_x, val_y), EVAL_BATCH_SIZE)
    x, y = pairs.next()
    batches = indexed_batches(x, y, trial.pretext_batch_size)  # later epochs assign their pairs
    del x, y  # copied into the batches' variables

    def epoch_begin(epoch: int) -> None:
        # Keras starts the epoch's dataset iterator after `on_epoch_begin`: it reads these pairs and order.
        if epoch > 0:
            batches.set_data(*pairs.next())
        order = np.random.default_rng([trial.seed, STREAM_PRETEXT_ORDER, epoch]).permutation(n_train)
        batches.in_order(order)

    def epoch_end(epoch: int, fit_logs: EpochLogs) -> None:
        logs = {"epoch": epoch + 1, "loss": float(fit_logs["loss"]), "val_loss": float(fit_logs["val_loss"])}
        if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
            fitted.diverged_epoch = epoch + 1
            model.stop_training = True
            return
        fitted.history.append(logs)
        driven.on_epoch_end(epoch, dict(logs))  # EarlyStopping may set `model.stop_training`: fit ends
        if on_epoch is not None:
            on_epoch(epoch + 1, dict(logs))

    model.fit(
        batches.in_order(np.arange(n_train)),
        epochs=trial.pretext_epochs,
        shuffle=False,
        verbose=0,
        validation_data=val_batches,
        callbacks=[EpochHooks(epoch_begin, epoch_end)],
    )
    if fitted.diverged_epoch is None:
        driven.on_train_end()  # EarlyStopping puts the best epoch's weights back here
        if early is not None and early.stopped_epoch > 0:
            fitted.stopped_epoch = early.stopped_epoch + 1
    return fitted


def _scores(task, params, seed, test_images, test_x, test_y, pred) -> tuple[dict[str, Any], dict]:
    """The test metrics beside their references (`references.pretext_scores`) and the examples, by head."""
    n = min(4, len(pred))
    if task.head == "image":
        region = task.region(test_images, np.random.default_rng([seed, STREAM_PRETEXT_TEST]), **params)
        scores = references.pretext_scores(task, np.asarray(test_y, np.uint8), pred, test_x, region)
        examples = {
            "inputs": np.asarray(test_x[:n], np.uint8),
            "targets": np.asarray(test_y[:n], np.uint8),
            "outputs": pred[:n],
        }
        return scores, examples
    out = pred[:, 0] if task.head == "angle" else pred
    scores = references.pretext_scores(task, np.asarray(test_y), out)
    examples = {"inputs": np.asarray(test_x[:n], np.uint8)}
    if task.head == "angle":
        examples["angle_true_deg"] = np.asarray(test_y[:n], np.float64) * 360.0
        examples["angle_pred_deg"] = np.mod(np.asarray(out[:n], np.float64), 1.0) * 360.0
    else:  # rotation4 head: classes are quarter turns
        examples["angle_true_deg"] = np.asarray(test_y[:n], np.float64) * 90.0
        examples["angle_pred_deg"] = np.argmax(out[:n], axis=1).astype(np.float64) * 90.0
    return scores, examples


def _run_own_step(
    task: PretextTask,
    trial: TrialConfig,
    params: dict[str, Any],
    data: Any,
    x_train: np.ndarray,
    x_val: np.ndarray,
    on_epoch: Callable[[int, EpochLogs], None] | None,
) -> PretextResult:
    """The pretext phase of a task with a declared step (`DECLARED_STEPS[type(task.step)](task, run)`) or a
    step of its own (`task.train(run)`), `run` a `PretextRun`."""
    encoder = models.trial_encoder(trial, trial.weights, trial.weights_path)
    run = PretextRun(trial, dict(params), encoder, x_train, x_val, data.test.images, on_epoch)
    result = DECLARED_STEPS[type(task.step)](task, run) if task.step is not None else task.train(run)
    if not isinstance(result, PretextResult) or result.task != trial.task:
        raise TypeError(
            f"task {trial.task!r}: train must return a study.train.results.PretextResult with "
            f"task={trial.task!r}; got {type(result).__name__}"
            f"{'' if not isinstance(result, PretextResult) else f' of {result.task!r}'}"
        )
    return result


def _pretext_loss(task: Any) -> Any:
    if task.head == "image":
        return models.preprocessed_mse  # targets are the uint8 originals, compared in preprocessed units
    if task.loss not in ("mse", "sparse_categorical_crossentropy"):
        raise ValueError(
            f"pretext task {task.name!r} has loss {task.loss!r}; the pretext loop knows mse and "
            "sparse_categorical_crossentropy"
        )
    return task.loss


def _as_target(head: str, y: np.ndarray) -> np.ndarray:
    """Targets in the shape the head outputs: angle/360 as `(N, 1)` float32; others unchanged."""
    return np.asarray(y, np.float32).reshape(-1, 1) if head == "angle" else y
