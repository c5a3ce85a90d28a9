"""The two training phases of a trial — `run_pretext` and `run_finetune` — and TensorFlow's set-up.

Both phases know nothing about Ray: the trainable passes `on_epoch` callbacks and stores what they return.

Reproducibility (see docs RAY.md, "TensorFlow inside trials"): `configure_tensorflow` fixes intra-op threads,
inter-op = 1 and op determinism; each phase reseeds Python, NumPy and Keras from `trial.seed`
(`_fresh_keras_state`), so the same seed gives bitwise-identical weights and metrics.
Models come through `study.train.model_cache`: a reused worker trains a remembered, already traced model of the
same architecture, set to exactly the state a new one would start in (same results, no re-tracing).
All data randomness is derived per epoch, `np.random.default_rng([seed, stream, epoch])`, never drawn from a
running generator, so a phase resumed at epoch k replays exactly. The stream ids are below.

Splits: both phases use `study.data.dataset.stratified_split(train labels, val_fraction, seed, groups)` (groups: the
lesion ids of a labels CSV, kept whole; None for folders), so for one seed every arm (and the pretext phase)
sees the same validation images; the pretext phase trains on all non-validation training images (it uses no
labels), the fine-tune phase on `label_fraction` of them (`finetune_split`).

The fine-tune phase trains in one `fit` call; its per-epoch work (evaluation of the validation and test
images in one pass through the model's compiled predict function, the history, `callbacks`, `on_epoch`'s
reports and checkpoints) runs in an epoch-end callback. Keras' set-up of a `fit` or `predict` call costs
~20 ms, which a call per epoch paid ~30 times per demo trial; the numbers are bitwise those of a call per
epoch (tests/test_training.py keeps that loop as the reference).

Divergence: a non-finite training or validation loss stops the phase without raising. The diverged epoch is
not added to the history (its numbers are garbage) and `on_epoch` is not called for it. It is detected at
the end of the epoch: the epoch's loss is a running mean, so one non-finite batch makes it non-finite.
(Keras' `TerminateOnNaN` would stop mid-epoch, but a callback with batch hooks makes Keras fetch the logs
after every batch, which cost ~40 % of a small model's epoch time here.)
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import random
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from study.tasks import metrics as study_metrics
from study.train import model_cache
from study.train import models
from study.tasks import registry as pretext
from study.tasks import references
from study.train import regimes
from study.spec.config import (
    FINETUNE,
    MODEL,
    PRETEXT,
    TrialConfig,
    phase_values,
    regime_name,
    resolved_task_params,
)

# Random streams: `default_rng([seed, STREAM, epoch])` per epoch, `default_rng([seed, STREAM])` when fixed.
STREAM_PRETEXT_PAIRS = 11  # corrupted training inputs, fresh each epoch
STREAM_PRETEXT_ORDER = 12  # order of the training pairs within an epoch
STREAM_PRETEXT_VAL = 13  # validation pairs, generated once per trial
STREAM_PRETEXT_TEST = 14  # test pairs: fixed per seed, identical for every arm/run with that seed and task
STREAM_FINETUNE_ORDER = 21  # order of the fine-tune training images within an epoch

# Prediction batch size: fixed (not the training batch size) so evaluation numbers do not depend on it.
EVAL_BATCH_SIZE = 64
PREDICT_CHUNK = 512  # images per predict call when outputs are converted chunk by chunk
STATE_JSON = "state.json"

EpochLogs = dict[str, Any]
SaveState = Callable[[str | os.PathLike], None]


# ---------------------------------------------------------------------------------------------------------
# TensorFlow set-up
def configure_tensorflow(threads: int, deterministic: bool = True) -> None:
    """Intra-op threads = `threads`, inter-op = 1, op determinism on; GPU memory growth when GPUs exist.

    Call it before TensorFlow runs anything in the process. Calling it again with the same values is a
    no-op. TensorFlow cannot change its thread pools once started, so a different `threads` later raises
    `RuntimeError` (rather than warning): results record `threads`, and weights differ between 1 and 2
    threads, so silently running with other settings would mislabel them.
    """
    import tensorflow as tf

    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads={threads!r}: TensorFlow intra-op threads must be an integer >= 1")
    for gpu in tf.config.list_physical_devices("GPU"):
        if not tf.config.experimental.get_memory_growth(gpu):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # GPUs already initialised: the setting only matters for memory use
                warnings.warn(
                    f"could not enable memory growth on {gpu.name}: TensorFlow already started", stacklevel=2
                )
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current != (threads, 1):
        # First configuration in this process: TensorFlow and Keras are imported and nothing is built yet.
        # Move the imported modules' millions of objects out of the garbage collector's view, so that the
        # collection at the start of every phase (`collect_garbage`, which also freezes what phases keep)
        # does not walk them.
        gc.freeze()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            # One inter-op thread: with TensorFlow's default pool, identical CPU runs differed (RAY.md).
            tf.config.threading.set_inter_op_parallelism_threads(1)
            # Op determinism refuses random ops without a seed; phases reseed Keras, not TensorFlow
            # (see `_fresh_keras_state`), so the global seed is set here, once per process.
            tf.random.set_seed(0)
        except RuntimeError as exc:
            raise RuntimeError(
                f"TensorFlow already started in this process with intra-op threads={current[0]} and "
                f"inter-op threads={current[1]} (0 = TensorFlow's default), and cannot switch to "
                f"threads={threads}, inter-op=1. Call study.train.phases.configure_tensorflow(threads) before "
                "building any model, and keep TrialConfig.threads the same for all trials of a study "
                "(a reused Ray worker keeps the first trial's threads)."
            ) from exc
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # TensorFlow has no public switch back; the framework-level function has existed since TF 2.9.
        from tensorflow.python.framework import config as tf_framework_config

        tf_framework_config.disable_op_determinism()


# ---------------------------------------------------------------------------------------------------------
# results
@dataclass
class PretextResult:
    """Outcome of a pretext phase.

    `encoder_weights`: `encoder.get_weights()` after training (best validation epoch when
    `pretext_patience` is set), `[]` when diverged. `metrics`: test-set metrics beside their learning-free
    references and the `learned` verdict (`study.tasks.references.pretext_scores`; floats, plus the str `headline`
    and `ref_name` and the bools `learned`, `beats_classical`), `{}` when diverged. `history`: per epoch
    `{"epoch" (1-based), "loss", "val_loss"}`. `examples`: for image tasks, uint8 `(4, S, S, 3)` arrays
    `inputs` (corrupted), `targets` (originals), `outputs` (reconstructions); for the rotation tasks
    `inputs` (rotated) and float `(4,)` `angle_true_deg`, `angle_pred_deg`.
    `stopped_epoch`: epoch at which early stopping ended the phase, else None.
    `cost`: what the phase cost (`run_pretext` fills it): `seconds` (wall, the whole phase including model
    build and test scoring), `device` ("CPU" or the GPU's name), `devices` (CPU threads or GPUs used),
    `images_seen` (training images drawn: epochs run x training images; a two-view task sees each as two
    views), `flops` (estimated training FLOPs: `models.forward_flops` of the trained model x
    `models.TRAIN_FLOPS_FACTOR` per training input, plus forward-only passes such as BYOL's target network;
    validation and test scoring left out); `{}` in results saved before costs were recorded.
    """

    task: str
    encoder_weights: list[np.ndarray]
    metrics: dict[str, float]
    history: list[EpochLogs]
    diverged: bool = False
    diverged_epoch: int | None = None
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    stopped_epoch: int | None = None
    cost: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> None:
        """Write `encoder_weights.npz`, `examples.npz` and `pretext.json` into `directory` (created)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _save_arrays(d / "encoder_weights.npz", self.encoder_weights)
        np.savez(d / "examples.npz", **self.examples)
        meta = {
            "task": self.task,
            "metrics": self.metrics,
            "history": self.history,
            "diverged": self.diverged,
            "diverged_epoch": self.diverged_epoch,
            "stopped_epoch": self.stopped_epoch,
            "cost": self.cost,
            "n_weights": len(self.encoder_weights),
        }
        (d / "pretext.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> PretextResult:
        d = Path(directory)
        if not (d / "pretext.json").is_file():
            raise FileNotFoundError(f"{d} holds no saved pretext result (pretext.json missing)")
        meta = json.loads((d / "pretext.json").read_text())
        weights = _load_arrays(d / "encoder_weights.npz")
        if len(weights) != meta["n_weights"]:
            raise ValueError(
                f"{d}: encoder_weights.npz holds {len(weights)} arrays, pretext.json says {meta['n_weights']}"
            )
        with np.load(d / "examples.npz") as z:
            examples = {k: z[k] for k in z.files}
        return cls(
            task=meta["task"],
            encoder_weights=weights,
            metrics=meta["metrics"],
            history=meta["history"],
            diverged=meta["diverged"],
            diverged_epoch=meta["diverged_epoch"],
            examples=examples,
            stopped_epoch=meta["stopped_epoch"],
            cost=meta.get("cost", {}),
        )


@dataclass
class FinetuneResult:
    """Outcome of a fine-tune phase.

    `history`: per completed epoch `{"epoch" (1-based), "loss", "val_loss", "val_<metric>"...,
    "test_<metric>"...}` with the metrics of `study.tasks.metrics.classification_metrics`; `val_loss` is Keras'
    binary cross-entropy on the validation images (what `EarlyStopping(monitor="val_loss")` would see).
    `regimes`: per `regime_name(patience)`: `patience`, `stop_epoch`, `best_epoch`, `epoch_used`,
    `diverged`, `val_loss` and `test_<metric>` at `epoch_used` (see `run_finetune`).
    `model_weights`: full classifier weights after the last completed epoch.
    `train_index` / `val_index`: rows of `data.train` used for training / validation.
    `timings`: per epoch run by this call, `{"epoch", "fit_s", "eval_s"}` wall seconds of training and of
    the validation + test evaluation (kept out of `history` so histories stay comparable bit for bit).
    `probe`: the linear probe of the encoder the fine-tune started from (`study.train.probe.linear_probe`:
    `probe_auc`, `probe_val_auc`, `probe_c`, and `probe_s`, its wall seconds).
    """

    history: list[EpochLogs]
    regimes: dict[str, dict[str, Any]]
    diverged: bool
    diverged_epoch: int | None
    model_weights: list[np.ndarray]
    train_index: np.ndarray
    val_index: np.ndarray
    timings: list[dict[str, float]] = field(default_factory=list)
    probe: dict[str, float] = field(default_factory=dict)


def device_in_use(threads: int) -> dict[str, Any]:
    """`{"device", "devices"}` of this process's training: the first visible GPU's name and the number of
    visible GPUs (Ray makes only a trial's own GPUs visible), else "CPU" and `threads` (TensorFlow's intra-op
    threads, the CPUs a trial computes on)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return {"device": "CPU", "devices": float(threads)}
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return {"device": str(name), "devices": float(len(gpus))}


# ---------------------------------------------------------------------------------------------------------
# pretext phase
def run_pretext(
    trial: TrialConfig,
    data: Any,
    on_epoch: Callable[[int, EpochLogs], None] | None = None,
) -> PretextResult:
    """Train encoder + task head on `trial.task` from `data.train` images; evaluate on `data.test` images.

    Pairs come from `pretext.get_task(trial.task).make_batch`, regenerated every epoch; validation pairs
    (the `val_fraction` split) once per trial; test pairs from `default_rng([seed, STREAM_PRETEXT_TEST])`,
    so every run with the same seed and task is scored on the same corruptions. Loss: MSE on angle/360
    (`rotation`), sparse categorical cross-entropy (`rotation4`), MSE in preprocessed (BGR, mean-centred)
    units (image tasks). Adam(`pretext_lr`), `pretext_epochs`, `pretext_batch_size`; with
    `pretext_patience`, Keras' `EarlyStopping(val_loss, restore_best_weights=True)`.

    `on_epoch(epoch, logs)` is called after each completed epoch (1-based) with the history entry.

    A task with its own training step (`PretextTask.train`) gets the same set-up (parameters resolved, data
    checked, generators reseeded, validation split, the trial's encoder) as a `PretextRun` and returns the
    result itself; `make_batch`, the head and the loop below are then not used.

    The result's `cost` holds the phase's wall seconds, device and estimated FLOPs (`PretextResult`).
    """
    started = time.perf_counter()
    result = _train_pretext(trial, data, on_epoch)
    cost = {**result.cost, "seconds": time.perf_counter() - started, **device_in_use(trial.threads)}
    return dataclasses.replace(result, cost=cost)


def _train_pretext(
    trial: TrialConfig, data: Any, on_epoch: Callable[[int, EpochLogs], None] | None
) -> PretextResult:
    """`run_pretext` without the cost's time and device: the result's `cost` holds `images_seen` and
    `flops` (the standard loop's, or what a task's own step put there)."""
    configure_tensorflow(trial.threads)
    if trial.task == "none":
        raise ValueError("task='none' is the baseline arm and has no pretext phase; call run_finetune only")
    task = pretext.get_task(trial.task)
    params = resolved_task_params(trial)
    _check_data(trial, data)
    seed = trial.seed
    _fresh_keras_state(seed)

    train_index, val_index = validation_split(trial, data)
    x_train = data.train.images[train_index]
    if task.train is not None:
        return _run_own_step(task, trial, params, data, x_train, data.train.images[val_index], on_epoch)
    epochs = trial.pretext_epochs

    def inputs(i: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch `i`'s training pairs (targets in the head's shape); `i == epochs`: the test pairs."""
        if i == epochs:
            return task.make_batch(
                data.test.images, np.random.default_rng([seed, STREAM_PRETEXT_TEST]), **params
            )
        x, y = task.make_batch(x_train, np.random.default_rng([seed, STREAM_PRETEXT_PAIRS, i]), **params)
        return x, _as_target(task.head, y)

    # Pairs are made one epoch ahead in a background thread, while the model builds, traces and trains
    # (TensorFlow releases the GIL), so a GPU does not wait for the CPU's corruptions. Each epoch's pairs
    # come from their own generator, so they are the same arrays as made in line.
    ahead = ThreadPoolExecutor(1, thread_name_prefix="pretext-inputs")
    try:
        upcoming, upcoming_index = ahead.submit(inputs, 0), 0
        val_rng = np.random.default_rng([seed, STREAM_PRETEXT_VAL])
        val_x, val_y = task.make_batch(data.train.images[val_index], val_rng, **params)
        loss = _pretext_loss(task)
        key = _model_key(trial, task.head, loss)

        def build() -> keras.Model:
            encoder = _build_encoder(trial, trial.weights, trial.weights_path)
            return models.build_model(task.head, encoder, mixed_precision=trial.mixed_precision)

        model = model_cache.obtain(
            key,
            build,
            lambda: keras.optimizers.Adam(trial.pretext_lr),
            loss,
            deferrable=trial.weights == "random",
        )
        encoder = models.encoder_of(model)  # the remembered model's, when the cache returned one
        flops_per_image = models.forward_flops(model)

        def cost(epochs_run: int) -> dict[str, float]:
            seen = epochs_run * len(x_train)
            return {
                "images_seen": float(seen),
                "flops": float(models.TRAIN_FLOPS_FACTOR * flops_per_image * seen),
            }

        early = (
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=trial.pretext_patience, restore_best_weights=True
            )
            if trial.pretext_patience
            else None
        )
        driven = keras.callbacks.CallbackList([early] if early else [], model=model)
        driven.on_train_begin()
        history: list[EpochLogs] = []
        diverged_epoch: int | None = None
        # Converted to tensors once (numpy validation data would be converted again every epoch).
        val_batches = _batched((val_x, _as_target(task.head, val_y)), EVAL_BATCH_SIZE)
        x, y = upcoming.result()
        batches = _indexed_batches(x, y, trial.pretext_batch_size)  # later epochs assign their pairs
        del x, y  # copied into the batches' variables

        def epoch_begin(epoch: int) -> None:
            # Keras starts the epoch's dataset iterator after `on_epoch_begin`: it reads these pairs and order.
            nonlocal upcoming, upcoming_index
            if epoch > 0:
                batches.set_data(*upcoming.result())
            upcoming, upcoming_index = ahead.submit(inputs, epoch + 1), epoch + 1
            batches.in_order(
                np.random.default_rng([seed, STREAM_PRETEXT_ORDER, epoch]).permutation(len(x_train))
            )

        def epoch_end(epoch: int, fit_logs: EpochLogs) -> None:
            nonlocal diverged_epoch
            logs = {
                "epoch": epoch + 1,
                "loss": float(fit_logs["loss"]),
                "val_loss": float(fit_logs["val_loss"]),
            }
            if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
                diverged_epoch = epoch + 1
                model.stop_training = True
                return
            history.append(logs)
            driven.on_epoch_end(epoch, dict(logs))  # EarlyStopping may set `model.stop_training`: fit ends
            if on_epoch is not None:
                on_epoch(epoch + 1, dict(logs))

        # One `fit` call for the whole phase (each call costs ~20 ms of Keras set-up, plus its validation
        # set-up); the per-epoch work runs in `_EpochHooks`, between the epochs.
        model.fit(
            batches.in_order(np.arange(len(x_train))),
            epochs=epochs,
            shuffle=False,
            verbose=0,
            validation_data=val_batches,
            callbacks=[_EpochHooks(epoch_begin, epoch_end)],
        )
        if diverged_epoch is not None:
            return PretextResult(
                trial.task,
                [],
                {},
                history,
                diverged=True,
                diverged_epoch=diverged_epoch,
                cost=cost(diverged_epoch),
            )
        driven.on_train_end()  # EarlyStopping puts the best epoch's weights back here
        stopped = early.stopped_epoch + 1 if early is not None and early.stopped_epoch > 0 else None
        # after an early stop the job ahead made an epoch that will not run
        test_x, test_y = upcoming.result() if upcoming_index == epochs else inputs(epochs)
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)

    # Image outputs are converted to uint8 chunk by chunk: float32 outputs for a whole test set at 224 px
    # would take 0.6 MB per image.
    pred = _predict_chunked(model, test_x, models.to_uint8 if task.head == "image" else None)
    if pred is None:  # non-finite outputs: the weights went bad although the losses stayed finite
        return PretextResult(
            trial.task,
            [],
            {},
            history,
            diverged=True,
            diverged_epoch=len(history),
            stopped_epoch=stopped,
            cost=cost(len(history)),
        )
    n = min(4, len(pred))
    if task.head == "image":
        region = task.region(data.test.images, np.random.default_rng([seed, STREAM_PRETEXT_TEST]), **params)
        scores = references.pretext_scores(task, np.asarray(test_y, np.uint8), pred, test_x, region)
        examples = {
            "inputs": np.asarray(test_x[:n], np.uint8),
            "targets": np.asarray(test_y[:n], np.uint8),
            "outputs": pred[:n],
        }
    else:
        out = pred[:, 0] if task.head == "angle" else pred
        scores = references.pretext_scores(task, np.asarray(test_y), out)
        examples = {"inputs": np.asarray(test_x[:n], np.uint8)}
        if task.head == "angle":
            examples["angle_true_deg"] = np.asarray(test_y[:n], np.float64) * 360.0
            examples["angle_pred_deg"] = np.mod(np.asarray(out[:n], np.float64), 1.0) * 360.0
        else:  # rotation4: classes are quarter turns
            examples["angle_true_deg"] = np.asarray(test_y[:n], np.float64) * 90.0
            examples["angle_pred_deg"] = np.argmax(out[:n], axis=1).astype(np.float64) * 90.0
    return PretextResult(
        trial.task,
        encoder.get_weights(),
        {k: v if isinstance(v, (bool, str)) else float(v) for k, v in scores.items()},
        history,
        examples=examples,
        stopped_epoch=stopped,
        cost=cost(len(history)),
    )


@dataclass(frozen=True)
class PretextRun:
    """What `run_pretext` hands a task's own training step (`PretextTask.train`; `study.tasks.registry` docstring).

    `params`: the task's resolved parameters. `encoder`: the trial's encoder, built after Python, NumPy and
    Keras were reseeded from `trial.seed` and initialised as `trial.weights` says; train it in place.
    `train_images`, `val_images`: uint8 `(N, S, S, 3)`, `data.train` split by `validation_split` (the
    validation images every arm of this seed holds out); `test_images`: `data.test`'s. `on_epoch(epoch,
    logs)`: call after each completed epoch (1-based) with `{"epoch", "loss", "val_loss"}`; None: no one
    listens.
    """

    trial: TrialConfig
    params: dict[str, Any]
    encoder: keras.Model
    train_images: np.ndarray
    val_images: np.ndarray
    test_images: np.ndarray
    on_epoch: Callable[[int, EpochLogs], None] | None = None


def _run_own_step(
    task: Any,
    trial: TrialConfig,
    params: dict[str, Any],
    data: Any,
    x_train: np.ndarray,
    x_val: np.ndarray,
    on_epoch: Callable[[int, EpochLogs], None] | None,
) -> PretextResult:
    """The pretext phase of a task that brings its own training step: `task.train(PretextRun(...))`."""
    encoder = _build_encoder(trial, trial.weights, trial.weights_path)
    result = task.train(PretextRun(trial, dict(params), encoder, x_train, x_val, data.test.images, on_epoch))
    if not isinstance(result, PretextResult) or result.task != trial.task:
        raise TypeError(
            f"task {trial.task!r}: train must return a study.train.phases.PretextResult with task={trial.task!r}; "
            f"got {type(result).__name__}{'' if not isinstance(result, PretextResult) else f' of {result.task!r}'}"
        )
    return result


def _build_encoder(trial: TrialConfig, weights: str, weights_path: str | None) -> keras.Model:
    """The trial's encoder (`models.build_encoder` with the trial's architecture settings)."""
    small = trial.encoder == "small"
    return models.build_encoder(
        trial.encoder,
        trial.image_size,
        trial.encoder_widths,
        weights,
        weights_path,
        mixed_precision=trial.mixed_precision,
        output_stride=trial.encoder_stride if small else None,
        bn_momentum=trial.bn_momentum if small else models.DEFAULT_BN_MOMENTUM,
    )


def _model_key(trial: TrialConfig, head: str, loss: Any) -> tuple:
    """What a compiled model's traced functions depend on, apart from input shapes and the optimizer (both
    checked by `study.train.model_cache` itself): every field tagged `config.MODEL` (architecture, image size,
    precision; BatchNorm's momentum is a constant of the traced train step), the head and the loss."""
    loss_name = loss if isinstance(loss, str) else f"{loss.__module__}.{loss.__qualname__}"
    return (json.dumps(phase_values(trial, MODEL), sort_keys=True), head, loss_name)


# Phases between full garbage collections (see `collect_garbage`).
FULL_GC_EVERY = 16
_phases_since_full_gc = 0


def collect_garbage() -> None:
    """Free what earlier phases left (their fresh models are reference cycles) without walking, every phase,
    the ~0.5M objects that outlive them (TensorFlow, Keras, Ray, the remembered models, decoded data): those
    alive after a collection are frozen (`gc.freeze`), so later collections, explicit or automatic, skip them
    (~70 ms -> ~0 per phase for the demo). Every `FULL_GC_EVERY` phases they are thawed and collected too, so
    a cycle that died after being frozen (a model the cache evicted) is still freed, late but freed."""
    global _phases_since_full_gc
    _phases_since_full_gc += 1
    if _phases_since_full_gc >= FULL_GC_EVERY:
        gc.unfreeze()
        _phases_since_full_gc = 0
    gc.collect()
    gc.freeze()


def _fresh_keras_state(seed: int) -> None:
    """Reseed Python's, NumPy's and Keras' generators and free earlier models: a reused worker process starts
    each phase as a fresh one would.

    As `keras.utils.set_random_seed` and `keras.backend.clear_session`, minus the two calls that clear
    TensorFlow's caches of instantiated functions (`tf.random.set_seed` and the session's kernel-cache
    reset), which cost a remembered model (`study.train.model_cache`) ~0.8 s of re-instantiation per phase. Neither
    is needed for reproducibility (and `model_cache.trim_kernel_cache` bounds the memory TensorFlow would
    otherwise keep): Keras draws every initial weight and dropout mask from stateless ops seeded
    by its `SeedGenerator`s, whose seeds come from Python's `random`; TensorFlow's global seed (which op
    determinism requires to be set) is set once per process by `configure_tensorflow`.
    """
    collect_garbage()
    model_cache.trim_kernel_cache()
    random.seed(seed)
    np.random.seed(seed)
    # Keras' global SeedGenerator (unseeded `keras.random` calls) is recreated from `random` on next use.
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)


def _predict_chunked(
    model: keras.Model, x: np.ndarray, convert: Callable[[np.ndarray], np.ndarray] | None
) -> np.ndarray | None:
    """`model.predict(x, batch_size=EVAL_BATCH_SIZE)` (`_predict_batches`) in chunks of `PREDICT_CHUNK`
    images, each passed through `convert`; None if any output is not finite."""
    parts = []
    for start in range(0, len(x), PREDICT_CHUNK):
        chunk = _tensor_batches(x[start : start + PREDICT_CHUNK], EVAL_BATCH_SIZE)
        out = np.asarray(_predict_batches(model, chunk), np.float32)
        if not np.all(np.isfinite(out)):
            return None
        parts.append(convert(out) if convert is not None else out)
    return np.concatenate(parts)


def _pretext_loss(task: Any) -> Any:
    if task.head == "image":
        return models.preprocessed_mse  # targets are the uint8 originals, compared in preprocessed units
    if task.loss not in ("mse", "sparse_categorical_crossentropy"):
        raise ValueError(
            f"pretext task {task.name!r} has loss {task.loss!r}; training.py knows mse and "
            "sparse_categorical_crossentropy"
        )
    return task.loss


def _as_target(head: str, y: np.ndarray) -> np.ndarray:
    """Targets in the shape the head outputs: angle/360 as `(N, 1)` float32; others unchanged."""
    return np.asarray(y, np.float32).reshape(-1, 1) if head == "angle" else y


# ---------------------------------------------------------------------------------------------------------
# fine-tune phase
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
    configure_tensorflow(trial.threads)
    _check_data(trial, data)
    seed = trial.seed
    _fresh_keras_state(seed)

    train_index, val_index = finetune_split(trial, data)
    x_train, y_train = data.train.images[train_index], _binary(data.train.labels[train_index])
    x_val, y_val = data.train.images[val_index], data.train.labels[val_index]
    x_test, y_test = data.test.images, data.test.labels
    # Validation and test images evaluated together, as tensor batches made once per phase (numpy inputs would
    # be converted again at every evaluation).
    x_eval = np.concatenate([x_val, x_test])
    batches = _indexed_batches(x_train, y_train, trial.batch_size)
    eval_batches = _tensor_batches(x_eval, EVAL_BATCH_SIZE)

    # On resume or with pretext weights the initial encoder weights are overwritten: skip the ImageNet file.
    overwritten = encoder_weights is not None or resume_dir is not None
    key = _model_key(trial, "classification", "binary_crossentropy")

    def build() -> keras.Model:
        encoder = _build_encoder(
            trial, "random" if overwritten else trial.weights, None if overwritten else trial.weights_path
        )
        return models.build_model("classification", encoder, mixed_precision=trial.mixed_precision)

    model = model_cache.obtain(
        key,
        build,
        lambda: keras.optimizers.Adam(trial.lr),
        "binary_crossentropy",
        deferrable=overwritten or trial.weights == "random",
    )
    if encoder_weights is not None:
        models.set_encoder_weights(models.encoder_of(model), encoder_weights)
    bce = keras.losses.BinaryCrossentropy()

    history: list[EpochLogs] = []
    if resume_dir is not None:
        history, probe_scores = _load_state(model, Path(resume_dir), trial, data)
    else:
        # Before any fine-tune step: the encoder as the pretext phase left it (or as initialised).
        # The training images in their own order, from the batches the fine-tune trains on (no second copy
        # of the training set: at 224 px that is ~150 KB per image).
        train_in_order = batches.in_order(np.arange(len(x_train)))
        probe_scores = _probe_encoder(model, train_in_order, (y_train, y_val, y_test), eval_batches)

    def save_state(directory: str | os.PathLike) -> None:
        _save_state(model, Path(directory), trial, data, history, probe_scores)

    driven = keras.callbacks.CallbackList(list(callbacks), model=model)
    driven.on_train_begin()
    diverged_epoch: int | None = None
    timings: list[dict[str, float]] = []
    started: list[float] = []

    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, STREAM_FINETUNE_ORDER, epoch]).permutation(len(x_train))

    def epoch_begin(epoch: int) -> None:
        # Keras starts the epoch's dataset iterator after `on_epoch_begin`: it reads this epoch's order.
        batches.in_order(order(epoch))
        started.append(time.perf_counter())

    def epoch_end(epoch: int, fit_logs: EpochLogs) -> None:
        nonlocal diverged_epoch
        fitted = time.perf_counter()
        loss = float(fit_logs["loss"])
        p_eval = _predict_proba(model, eval_batches)
        p_val, p_test = p_eval[: len(x_val)], p_eval[len(x_val) :]
        timings.append(
            {"epoch": epoch + 1, "fit_s": fitted - started[-1], "eval_s": time.perf_counter() - fitted}
        )
        if not (math.isfinite(loss) and np.all(np.isfinite(p_val)) and np.all(np.isfinite(p_test))):
            diverged_epoch = epoch + 1
            model.stop_training = True
            return
        logs: EpochLogs = {"epoch": epoch + 1, "loss": loss}
        logs.update(_prefixed("val_", study_metrics.classification_metrics(y_val, p_val)))
        # Keras' own loss on the validation set: the number a fit(validation_data=...) run would monitor.
        logs["val_loss"] = float(bce(_binary(y_val), p_val[:, None]))
        logs.update(_prefixed("test_", study_metrics.classification_metrics(y_test, p_test)))
        if not math.isfinite(logs["val_loss"]):
            diverged_epoch = epoch + 1
            model.stop_training = True
            return
        history.append(logs)
        model.stop_training = False
        driven.on_epoch_end(epoch, dict(logs))
        if on_epoch is not None:
            on_epoch(epoch + 1, dict(logs), save_state)
        # `fit` ends after this epoch if a callback set `model.stop_training`

    # One `fit` call for the whole phase (each call costs ~20 ms of Keras set-up); the per-epoch work runs in
    # `_EpochHooks`, between the epochs.
    if len(history) < trial.finetune_epochs:
        model.fit(
            batches.in_order(order(len(history))),
            epochs=trial.finetune_epochs,
            initial_epoch=len(history),
            shuffle=False,
            verbose=0,
            callbacks=[_EpochHooks(epoch_begin, epoch_end)],
        )
    driven.on_train_end()
    return FinetuneResult(
        history=history,
        regimes=replay_regimes(trial, history, diverged_epoch),
        diverged=diverged_epoch is not None,
        diverged_epoch=diverged_epoch,
        model_weights=model.get_weights(),
        train_index=train_index,
        val_index=val_index,
        timings=timings,
        probe=probe_scores,
    )


# Feature extractors (input -> pooled encoder features) of the remembered models, built once per model, so
# a kept model's probe is not re-traced every trial.
_FEATURE_MODELS: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


def _probe_encoder(model: keras.Model, train_batches, labels, eval_batches) -> dict[str, float]:
    """Linear probe (`study.train.probe`) on the classifier's pooled encoder features, before fine-tuning.

    `train_batches`: the training images (with labels, ignored by `predict`); `labels`: `(y_train, y_val,
    y_test)`; `eval_batches`: the validation then the test images.
    """
    from study.train.probe import linear_probe

    started = time.perf_counter()
    features = _FEATURE_MODELS.get(model)
    if features is None:
        features = keras.Model(model.input, model.get_layer("gap").output, name="pooled_features")
        _FEATURE_MODELS[model] = features
    y_train, y_val, y_test = labels
    f_train = np.asarray(_predict_batches(features, train_batches), np.float64)
    f_eval = np.asarray(_predict_batches(features, eval_batches), np.float64)
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
        else [f"test_{k}" for k in study_metrics.classification_metrics([0, 1], [0.25, 0.75])]
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
    """P(malignant) `(N,)` float64 from the sigmoid head, for `batches` (`_tensor_batches`)."""
    return np.asarray(_predict_batches(model, batches), np.float64).reshape(-1)


def _predict_batches(model: keras.Model, batches: Any) -> np.ndarray:
    """`model.predict(batches)`, bit for bit, without its per-call set-up (~10-20 ms: data adapter, epoch
    iterator, callbacks): the model's own compiled predict function, called once per batch.

    `batches`: a sequence of input batches (`_tensor_batches`) or a batched `tf.data.Dataset` (of images, or
    of `(images, labels)` pairs, labels ignored). Each batch's images go to the function as `model.predict`
    passes them (a list of one batch), so the same traced function computes them.
    """
    import tensorflow as tf

    model.make_predict_function()
    predict = model.predict_function
    out = []
    for batch in batches:
        x = batch[0] if isinstance(batch, tuple) else batch
        if not out and hasattr(predict, "get_concrete_function"):
            # Traced once for any batch size, as `model.predict`'s dataset would have it traced: a first call
            # with a full batch would trace for that size and the last, smaller batch trace it again.
            predict.get_concrete_function([tf.TensorSpec((None, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(predict([x])))
    return np.concatenate(out)


def _tensor_batches(x: np.ndarray, batch_size: int) -> list[Any]:
    """`x` in batches of `batch_size` as tensors, converted once per phase (the batches a
    `tf.data.Dataset.from_tensor_slices(x).batch(batch_size)` would yield)."""
    import tensorflow as tf

    return [tf.constant(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]


class _EpochHooks(keras.callbacks.Callback):
    """`begin(epoch)` at the start and `end(epoch, logs)` at the end of every epoch of a `fit` call (0-based
    epoch, Keras' epoch logs). Epoch hooks only: with batch hooks Keras would fetch the logs after every
    batch (see the module docstring)."""

    def __init__(self, begin: Callable[[int], None], end: Callable[[int, EpochLogs], None]) -> None:
        super().__init__()
        self._begin, self._end = begin, end

    def on_epoch_begin(self, epoch: int, logs: EpochLogs | None = None) -> None:
        self._begin(epoch)

    def on_epoch_end(self, epoch: int, logs: EpochLogs | None = None) -> None:
        self._end(epoch, dict(logs or {}))


def _batched(x: Any, batch_size: int):
    """Array `x` (or a tuple of arrays) as a `tf.data.Dataset` of batches, converted to tensors once and
    reusable for every fit/predict."""
    import tensorflow as tf

    tensors = tuple(tf.constant(a) for a in x) if isinstance(x, tuple) else tf.constant(x)
    return tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)


class _IndexedBatches:
    """Training batches in a given order, gathered from arrays held once per phase.

    Same batches as `model.fit(x[order], y[order], batch_size, shuffle=False)`, bit for bit. The arrays and
    the order live in CPU variables read by one `tf.data` pipeline built here: a new epoch assigns them
    (`in_order`, `set_data`) instead of converting the arrays and building (and tracing) a new pipeline
    every epoch, which cost ~11 ms per epoch of the demo's ~0.1 s fine-tune epochs.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        import tensorflow as tf

        n = len(x)
        with tf.device("/CPU:0"):  # input data stay in host memory, also on GPU machines
            self._x = tf.Variable(x, trainable=False)
            self._y = tf.Variable(y, trainable=False)
            self._order = tf.Variable(np.arange(n, dtype=np.int64), trainable=False)

        def batch(b):
            index = self._order[b * batch_size : (b + 1) * batch_size]
            return tf.gather(self._x, index), tf.gather(self._y, index)

        steps = -(-n // batch_size)
        self._dataset = tf.data.Dataset.range(steps).map(batch).prefetch(1)

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """New arrays of the same shapes and dtypes (the next epoch's pretext pairs)."""
        self._x.assign(x)
        self._y.assign(y)

    def in_order(self, order: np.ndarray):
        """The dataset, yielding `(x[order], y[order])` in batches (valid until the next call)."""
        self._order.assign(np.asarray(order, np.int64))
        return self._dataset


# `_IndexedBatches` kept between phases, by array shapes, dtypes and batch size (most recent last).
_KEPT_BATCHES: dict[tuple, _IndexedBatches] = {}
KEEP_BATCHES = 4  # the demo's phases use three layouts (rotation pairs, image pairs, fine-tune images)
KEEP_BATCHES_MAX_BYTES = 32 * 2**20  # larger inputs are not kept: their phases are long, the memory large


def _indexed_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> _IndexedBatches:
    """`_IndexedBatches(x, y, batch_size)`, reusing one of an earlier phase of this process when the layout
    matches (its variables assigned the new arrays: the same batches, bit for bit), which saves creating the
    variables and tracing the pipeline's map function (~20 ms a phase). Inputs over
    `KEEP_BATCHES_MAX_BYTES` are neither kept nor reused."""
    key = (x.shape, x.dtype.str, y.shape, y.dtype.str, batch_size)
    if x.nbytes + y.nbytes > KEEP_BATCHES_MAX_BYTES:
        return _IndexedBatches(x, y, batch_size)
    batches = _KEPT_BATCHES.pop(key, None)
    if batches is None:
        batches = _IndexedBatches(x, y, batch_size)
    else:
        batches.set_data(x, y)
    _KEPT_BATCHES[key] = batches
    while len(_KEPT_BATCHES) > KEEP_BATCHES:
        del _KEPT_BATCHES[next(iter(_KEPT_BATCHES))]
    return batches


def _binary(labels: np.ndarray) -> np.ndarray:
    """Labels 0/1 `(N,)` -> float32 `(N, 1)`, the shape of the sigmoid output."""
    return np.asarray(labels, np.float32).reshape(-1, 1)


# ---------------------------------------------------------------------------------------------------------
# resumable state
# What must match between a saved fine-tune state and the run resuming from it: every field that changes
# the fine-tune's numbers, directly or through the pretext it starts from (`config` phase tags).
_RESUME_PHASES = (PRETEXT, FINETUNE)


def _save_state(
    model: keras.Model,
    d: Path,
    trial: TrialConfig,
    data: Any,
    history: list[EpochLogs],
    probe_scores: dict[str, float],
) -> None:
    """Write `weights.npz`, `optimizer.npz` and `state.json` (last, so a present json means complete)."""
    d.mkdir(parents=True, exist_ok=True)
    _save_arrays(d / "weights.npz", model.get_weights())
    _save_arrays(d / "optimizer.npz", [v.numpy() for v in model.optimizer.variables])
    state = {
        "epoch": len(history),
        "history": history,
        "probe": probe_scores,
        "fingerprint": _fingerprint(data),
        "config": phase_values(trial, *_RESUME_PHASES),
    }
    tmp = d / (STATE_JSON + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, d / STATE_JSON)


def _load_state(
    model: keras.Model, d: Path, trial: TrialConfig, data: Any
) -> tuple[list[EpochLogs], dict[str, float]]:
    """Restore weights and optimizer state from `d`; returns the history and probe saved with them."""
    if not (d / STATE_JSON).is_file():
        raise FileNotFoundError(f"resume_dir={str(d)!r} holds no fine-tune state ({STATE_JSON} missing)")
    state = json.loads((d / STATE_JSON).read_text())
    now = phase_values(trial, *_RESUME_PHASES)
    # A state written before a field was compared lacks it: compared on the fields it holds.
    changed = sorted(k for k in now if k in state["config"] and state["config"][k] != now[k])
    if changed:
        saved = {k: state["config"].get(k) for k in changed}
        raise ValueError(
            f"resume_dir={str(d)!r} was saved with different {changed} ({saved} vs "
            f"{ {k: now[k] for k in changed} }); resume with the trial config that wrote it"
        )
    if state["fingerprint"] != _fingerprint(data):
        raise ValueError(
            f"resume_dir={str(d)!r} was saved for dataset {state['fingerprint']!r}, "
            f"not {_fingerprint(data)!r}; resume on the same data"
        )
    model.set_weights(_load_arrays(d / "weights.npz"))
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)  # creates the slot variables so they can be assigned
    saved = _load_arrays(d / "optimizer.npz")
    if len(saved) != len(optimizer.variables):
        raise ValueError(
            f"resume_dir={str(d)!r}: optimizer state has {len(saved)} variables, the model's "
            f"optimizer {len(optimizer.variables)}; it was saved by another model"
        )
    for var, value in zip(optimizer.variables, saved):
        var.assign(value)
    return list(state["history"]), dict(state.get("probe") or {})


def _save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """`arrays` into the `.npz` file `path`, atomically (a temporary file, renamed): one flat member per
    dtype and a `layout` member (JSON: each array's dtype and shape), because a zip member per array costs
    ~70 us (10 ms per checkpoint of the demo's model, 4 checkpoints per trial). `_load_arrays` reads it."""
    arrays = [np.asarray(a) for a in arrays]
    dtypes = list(dict.fromkeys(a.dtype.str for a in arrays))
    members = {
        f"flat{i}": np.concatenate([a.reshape(-1) for a in arrays if a.dtype.str == dtype])
        for i, dtype in enumerate(dtypes)
    }
    members["layout"] = np.array(json.dumps([[a.dtype.str, list(a.shape)] for a in arrays]))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **members)
    os.replace(tmp, path)


def _load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays `_save_arrays` wrote, in order; also a file of one member per array (`a0000`, `a0001`,
    ...), as checkpoints were written before."""
    with np.load(path, allow_pickle=False) as z:
        if "layout" not in z.files:
            return [z[name] for name in sorted(z.files)]
        layout = json.loads(str(z["layout"]))
        flats = {dtype: z[f"flat{i}"] for i, dtype in enumerate(dict.fromkeys(d for d, _ in layout))}
    offsets = dict.fromkeys(flats, 0)
    out = []
    for dtype, shape in layout:
        start, n = offsets[dtype], int(np.prod(shape, dtype=np.int64))
        out.append(flats[dtype][start : start + n].reshape(shape))
        offsets[dtype] = start + n
    return out


def _fingerprint(data: Any) -> str | None:
    return getattr(data, "fingerprint", None)


# ---------------------------------------------------------------------------------------------------------
# shared helpers
def validation_split(trial: TrialConfig, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation rows of `data.train` for this seed (the same in every arm); whole groups
    (lesions) when `data.train.groups` is set, so no group is in both."""
    from study.data.dataset import stratified_split

    groups = getattr(data.train, "groups", None)
    train_index, val_index = stratified_split(
        data.train.labels, trial.val_fraction, trial.seed, groups=groups
    )
    return np.asarray(train_index), np.asarray(val_index)


def finetune_split(trial: TrialConfig, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of `data.train` for the fine-tune phase: `validation_split`, then
    `label_fraction` of the training rows and, separately, of the validation rows (`study.data.dataset.label_subset`:
    stratified, whole groups when `data.train.groups` is set, nested across fractions for one seed).

    Both shrink because a label budget covers every label the fine-tune sees: with 5 % of the labels, early
    stopping (and the probe's choice of C) must not look at 20 % of them.
    """
    train_index, val_index = validation_split(trial, data)
    if trial.label_fraction < 1.0:
        from study.data.dataset import label_subset

        groups = getattr(data.train, "groups", None)

        def subset(rows: np.ndarray) -> np.ndarray:
            sub_groups = None if groups is None else np.asarray(groups)[rows]
            keep = label_subset(data.train.labels[rows], trial.label_fraction, trial.seed, groups=sub_groups)
            return rows[keep]

        train_index, val_index = subset(train_index), subset(val_index)
    return train_index, val_index


def _check_data(trial: TrialConfig, data: Any) -> None:
    """Clear errors for data that does not fit the trial (size, dtype, empty splits)."""
    for name in ("train", "test"):
        split = getattr(data, name)
        images = split.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (trial.image_size,) * 2 + (3,):
            raise ValueError(
                f"data.{name}.images must be uint8 (N, {trial.image_size}, {trial.image_size}, 3) for "
                f"image_size={trial.image_size}; got {images.dtype} {images.shape}. Decode the dataset at "
                "the trial's image_size (or set image_size to the data's)."
            )
        if len(images) == 0 or len(split.labels) != len(images):
            raise ValueError(
                f"data.{name} has {len(images)} images and {len(split.labels)} labels; need the "
                "same non-zero number"
            )
