"""Configuration objects: one trial (`TrialConfig`) and its validation.

A trial config travels through Ray Tune as a flat dict (`TrialConfig.to_dict`), so every field is a plain
JSON value. Validation happens on the driver, before any trial starts (`validate_trial`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TASK_NAMES = ("none", "rotation", "rotation4", "missing_patch", "corruption")
ENCODERS = ("small", "resnet50")
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
    data_path: str | None = None  # None: synthetic lesions (see synth_*)
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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder_widths"] = list(self.encoder_widths)
        d["patiences"] = list(self.patiences)
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
        return cls(**kw)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def regime_name(patience: int) -> str:
    """`0 -> "none"`, `3 -> "patience3"`: the label of an early-stopping regime in tables."""
    return "none" if patience == 0 else f"patience{patience}"
