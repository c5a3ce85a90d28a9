"""Configuration objects: one trial (`TrialConfig`) and its validation.

A trial config travels through Ray Tune as a flat dict (`TrialConfig.to_dict`), so every field is a plain
JSON value. Validation happens on the driver, before any trial starts (`validate_trial`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ENCODERS = ("small", "resnet50")
#: Output strides each encoder can be built with (`models.build_encoder`); ResNet50's is fixed by Keras.
ENCODER_STRIDES = {"small": (8, 16, 32), "resnet50": (32,)}
WEIGHTS = ("random", "imagenet")


class ConfigError(ValueError):
    """A config value the study cannot run with; the message names the field and the fix."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything one two-stage trial needs. Units: sizes in pixels, lr per Adam step.

    `patiences` lists the early-stopping regimes replayed from one fine-tune run: 0 means no early stopping.
    `threads` is TensorFlow's intra-op thread count (recorded, because weights differ between 1 and 2 threads).
    """

    task: str = "none"
    seed: int = 0
    # task parameters (None where the task does not use them)
    patch_size: int | None = None
    swap_count: int | None = None
    swap_patch_size: int | None = None
    # data
    data_path: str | None = None  # None: synthetic lesions (see synth_*); a folder or a labels CSV
    # Labels CSV only: the images folder (default: next to the CSV) and, for a diagnosis column (`dx`,
    # `diagnosis`), the classes counted as malignant (e.g. ("mel",)); see study.data.DataSource.
    data_images: str | None = None
    data_malignant: tuple[str, ...] = ()
    image_size: int = 64
    val_fraction: float = 0.2
    label_fraction: float = 1.0
    synth_n_train: int = 600
    synth_n_test: int = 200
    synth_seed: int = 1234
    cache_dir: str | None = None
    # model
    encoder: str = "small"
    encoder_widths: tuple[int, ...] = (16, 32, 64, 128)
    # Small encoder only: total downsampling (8, 16 or 32) and BatchNorm momentum (see models.build_encoder).
    encoder_stride: int = 32
    bn_momentum: float = 0.99
    weights: str = "random"
    weights_path: str | None = None
    # pretext phase
    pretext_epochs: int = 5
    pretext_lr: float = 1e-3
    pretext_batch_size: int = 32
    pretext_patience: int | None = None
    # fine-tune phase
    finetune_epochs: int = 15
    lr: float = 1e-3
    batch_size: int = 32
    patiences: tuple[int, ...] = (0, 3, 10)
    start_from_epoch: int = 0
    restore_best_weights: bool = False
    # execution
    threads: int = 1
    mixed_precision: bool = False
    # Where pretext weights are shared between trials (set by the runner under the run's storage).
    pretext_cache_dir: str | None = None
    checkpoint_every: int = 1  # fine-tune epochs between checkpoints
    # False: the trial trains its own pretext instead of sharing it (the naive study of bench/study_cost.py).
    share_pretext: bool = True
    # True (with exactly one patience > 0): stop fine-tuning where Keras' EarlyStopping would, saving the
    # remaining epochs; the other regimes then cannot be replayed from this run.
    early_stop_training: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder_widths"] = list(self.encoder_widths)
        d["patiences"] = list(self.patiences)
        d["data_malignant"] = list(self.data_malignant)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown trial config field(s) {unknown}; known fields: {sorted(names)}")
        kw = dict(d)
        if "encoder_widths" in kw and kw["encoder_widths"] is not None:
            kw["encoder_widths"] = tuple(int(w) for w in kw["encoder_widths"])
        if "patiences" in kw and kw["patiences"] is not None:
            kw["patiences"] = tuple(int(p) for p in kw["patiences"])
        if "data_malignant" in kw and kw["data_malignant"] is not None:
            kw["data_malignant"] = tuple(str(c) for c in kw["data_malignant"])
        return cls(**kw)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def regime_name(patience: int) -> str:
    """`0 -> "none"`, `3 -> "patience3"`: the label of an early-stopping regime in tables."""
    return "none" if patience == 0 else f"patience{patience}"


def validate_trial(trial: TrialConfig) -> None:
    """Raise `ConfigError` with one line saying what to change when `trial` cannot run.

    Runs on the driver before any trial starts; imports no TensorFlow.
    """
    from study import pretext

    def bad(msg: str) -> None:
        raise ConfigError(msg)

    if trial.task != "none" and trial.task not in pretext.TASKS:
        bad(
            f"task: unknown task {trial.task!r}; choose 'none' (baseline) or one of {', '.join(pretext.TASKS)}"
        )
    if trial.encoder not in ENCODERS:
        bad(f"encoder: unknown encoder {trial.encoder!r}; choose one of {', '.join(ENCODERS)}")
    if trial.weights not in WEIGHTS:
        bad(f"weights: unknown init {trial.weights!r}; choose one of {', '.join(WEIGHTS)}")
    if trial.weights_path is not None and trial.weights != "imagenet":
        bad(
            "weights_path: a weight file is only read with weights='imagenet'; set weights='imagenet' or drop it"
        )
    if trial.weights == "imagenet" and trial.encoder != "resnet50":
        bad(
            "weights: 'imagenet' exists only for encoder 'resnet50'; use weights='random' for the small encoder"
        )
    if trial.encoder_stride not in ENCODER_STRIDES[trial.encoder]:
        fixed = "; ResNet50's is fixed, as in the paper (or use encoder='small')"
        bad(
            f"encoder_stride: {trial.encoder} is built with stride {list(ENCODER_STRIDES[trial.encoder])} "
            f"(got {trial.encoder_stride!r}){fixed if trial.encoder == 'resnet50' else ''}"
        )
    stride = trial.encoder_stride
    if trial.image_size < max(32, stride) or trial.image_size % stride:
        bad(
            f"image_size: {trial.image_size} px cannot go through the {trial.encoder} encoder (stride "
            f"{stride}); use a multiple of {stride} that is at least 32, such as 32, 64 or 224"
        )
    if not 0 <= trial.bn_momentum < 1:
        bad(f"bn_momentum: must be in [0, 1) (got {trial.bn_momentum}; Keras' default is 0.99)")
    if not isinstance(trial.seed, int) or trial.seed < 0:
        bad(f"seed: {trial.seed!r} is not a non-negative integer")
    for name in ("lr", "pretext_lr"):
        value = getattr(trial, name)
        if not value > 0:
            bad(f"{name}: learning rate must be > 0 (got {value})")
    for name in (
        "finetune_epochs",
        "pretext_epochs",
        "batch_size",
        "pretext_batch_size",
        "threads",
        "synth_n_train",
        "synth_n_test",
        "checkpoint_every",
    ):
        value = getattr(trial, name)
        if not isinstance(value, int) or value < 1:
            bad(f"{name}: must be an integer >= 1 (got {value!r})")
    if not trial.patiences:
        bad("patiences: give at least one early-stopping regime (0 = no early stopping)")
    for p in trial.patiences:
        if p < 0:
            bad(f"patiences: patience must be >= 0 (got {p}; 0 means no early stopping)")
    if trial.early_stop_training and (len(trial.patiences) != 1 or trial.patiences[0] == 0):
        bad(
            f"early_stop_training: needs exactly one patience > 0 (got patiences={list(trial.patiences)}); "
            "replaying several regimes needs the full run"
        )
    if trial.pretext_patience is not None and trial.pretext_patience < 1:
        bad(f"pretext_patience: must be >= 1 or unset (got {trial.pretext_patience})")
    if trial.start_from_epoch < 0:
        bad(f"start_from_epoch: must be >= 0 (got {trial.start_from_epoch})")
    if not 0 < trial.val_fraction < 1:
        bad(f"val_fraction: must be in (0, 1) (got {trial.val_fraction}; the paper uses 0.2)")
    if not 0 < trial.label_fraction <= 1:
        bad(f"label_fraction: must be in (0, 1] (got {trial.label_fraction})")
    if any(w < 1 for w in trial.encoder_widths) or len(trial.encoder_widths) != 4:
        bad(f"encoder_widths: need 4 positive stage widths (got {list(trial.encoder_widths)})")
    # A task parameter the task does not use would be silently dropped: most likely a mix-up.
    used = () if trial.task == "none" else pretext.get_task(trial.task).params
    ignored = [k for k in pretext.PARAM_NAMES if k not in used and getattr(trial, k) is not None]
    if ignored:
        bad(
            f"{ignored[0]}: task {trial.task!r} does not use parameter(s) {ignored}; "
            f"it takes {list(used) or 'no parameters'}"
        )
    if trial.task != "none":
        task = pretext.get_task(trial.task)
        params = resolved_task_params(trial)
        try:
            task.validate(trial.image_size, **params)
        except ValueError as exc:
            bad(f"{trial.task}: {exc}")


def resolved_task_params(trial: TrialConfig) -> dict[str, Any]:
    """The task's parameters with the paper's defaults (scaled to the image size) filled in where unset."""
    from study import pretext

    if trial.task == "none":
        return {}
    task = pretext.get_task(trial.task)
    defaults = pretext.default_params(trial.task, trial.image_size)
    return {
        name: (getattr(trial, name) if getattr(trial, name) is not None else defaults[name])
        for name in task.params
    }
