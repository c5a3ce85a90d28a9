"""Which images each phase trains and validates on, and the check that the data fit the trial.

Both phases use `study.data.stratified_split(train labels, val_fraction, seed, groups)` (groups: the lesion
ids of a labels CSV, kept whole; None for folders), so for one seed every arm (and the pretext phase) sees the
same validation images; the pretext phase trains on all non-validation training images (it uses no labels),
the fine-tune phase on `label_fraction` of them (`finetune_split`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from study.data import label_subset, stratified_split
from study.spec.config import TrialConfig


def validation_split(trial: TrialConfig, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation rows of `data.train` for this seed (the same in every arm); whole groups
    (lesions) when `data.train.groups` is set, so no group is in both."""
    groups = getattr(data.train, "groups", None)
    train_index, val_index = stratified_split(
        data.train.labels, trial.val_fraction, trial.seed, groups=groups
    )
    return np.asarray(train_index), np.asarray(val_index)


def finetune_split(trial: TrialConfig, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of `data.train` for the fine-tune phase: `validation_split`, then
    `label_fraction` of the training rows and, separately, of the validation rows (`study.data.label_subset`:
    stratified, whole groups when `data.train.groups` is set, nested across fractions for one seed).

    Both shrink because a label budget covers every label the fine-tune sees: with 5 % of the labels, early
    stopping (and the probe's choice of C) must not look at 20 % of them.
    """
    train_index, val_index = validation_split(trial, data)
    if trial.label_fraction < 1.0:
        groups = getattr(data.train, "groups", None)

        def subset(rows: np.ndarray) -> np.ndarray:
            sub_groups = None if groups is None else np.asarray(groups)[rows]
            keep = label_subset(data.train.labels[rows], trial.label_fraction, trial.seed, groups=sub_groups)
            return rows[keep]

        train_index, val_index = subset(train_index), subset(val_index)
    return train_index, val_index


def check_data(trial: TrialConfig, data: Any) -> None:
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
