"""Seeded, stratified index splits: the validation split and label-efficiency subsets, keeping groups whole.

No file is read here: labels (and optional group ids) in, sorted int64 indices out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["label_subset", "stratified_split"]

_STREAM_VAL_SPLIT = 0x5EED_0001  # distinct generator streams, so a seed's val split and label subset differ
_STREAM_LABEL_SUBSET = 0x5EED_0002


def _check_labels(labels: np.ndarray, fn: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{fn}: labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}"
        )
    return labels


def _check_seed(seed: Any, fn: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _group_strata(labels: np.ndarray, groups: Any, fn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes int64 (N,): each image's group, 0..G-1 in sorted group-id order; sizes int64 (G,): images per
    group; group_labels (G,): the largest label in each group, its stratum)."""
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != len(labels):
        raise ValueError(
            f"{fn}: groups must be a 1-D array with one group id per label ({len(labels)}), got shape {g.shape}"
        )
    try:
        _, codes = np.unique(g, return_inverse=True)
    except TypeError as e:
        raise ValueError(f"{fn}: group ids must be comparable (strings or integers), got {e}") from None
    codes = codes.reshape(-1).astype(np.int64)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    sizes = np.bincount(codes, minlength=n_groups).astype(np.int64)
    group_labels = np.full(n_groups, labels.min() if len(labels) else 0, dtype=labels.dtype)
    np.maximum.at(group_labels, codes, labels)
    return codes, sizes, group_labels


def _closest_prefix(sizes: np.ndarray, target: float, lo: int, hi: int) -> int:
    """k in [lo, hi] whose prefix sum sizes[:k].sum() is closest to target; ties to the smaller k. For fixed
    sizes, k never decreases as target grows (so prefixes of one order nest)."""
    cum = np.concatenate([[0], np.cumsum(sizes)])
    ks = np.arange(lo, hi + 1)
    return int(ks[np.argmin(np.abs(cum[ks] - target))])


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train_idx, val_idx), each int64 sorted, disjoint, together covering 0..N-1.

    labels: int (N,). Without groups: per class with n_c images, round(val_fraction * n_c) go to validation,
    at least 1 when n_c >= 2 and at most n_c - 1 (each class keeps a training image).
    With groups (N,) (group ids, e.g. lesion ids): whole groups go to validation, so no group is in both.
    Each group's stratum is its largest label (a group with a malignant image counts as malignant); per
    stratum with n_c images in g_c groups, the groups are shuffled and the shortest-distance prefix to
    val_fraction * n_c images is taken, at least 1 and at most g_c - 1 groups when g_c >= 2 (none when 1).
    Deterministic for a seed; different seeds differ.
    """
    labels = _check_labels(labels, "stratified_split")
    seed = _check_seed(seed, "stratified_split")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"stratified_split: val_fraction must be in (0, 1), got {val_fraction!r}")
    rng = np.random.default_rng([seed, _STREAM_VAL_SPLIT])
    if groups is not None:
        codes, sizes, group_labels = _group_strata(labels, groups, "stratified_split")
        val_groups = []
        for c in np.unique(group_labels):
            order = rng.permutation(np.flatnonzero(group_labels == c))
            n_g = len(order)
            lo, hi = (1, n_g - 1) if n_g >= 2 else (0, 0)
            target = _round_half_up(val_fraction * sizes[order].sum())
            val_groups.append(order[: _closest_prefix(sizes[order], target, lo, hi)])
        chosen = np.concatenate(val_groups) if val_groups else np.zeros(0, np.int64)
        val_idx = np.flatnonzero(np.isin(codes, chosen)).astype(np.int64)
        train_idx = np.flatnonzero(~np.isin(codes, chosen)).astype(np.int64)
        return train_idx, val_idx
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = _round_half_up(val_fraction * len(idx))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val_idx)
    return train_idx, val_idx


def label_subset(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Sorted int64 indices of a stratified `fraction` of the labelled set (label-efficiency studies).

    labels: int (N,). Without groups: per class, max(1, round(fraction * n_c)) images are kept.
    With groups (N,): whole groups are kept; per stratum (a group's largest label) the groups are shuffled
    once per seed and the prefix whose image count is closest to max(1, round(fraction * n_c)) is kept (at
    least one group). Either way, for one seed the subsets nest: the subset at a smaller fraction is
    contained in the one at a larger fraction. fraction = 1 returns every index.
    """
    labels = _check_labels(labels, "label_subset")
    seed = _check_seed(seed, "label_subset")
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_subset: fraction must be in (0, 1], got {fraction!r}")
    rng = np.random.default_rng([seed, _STREAM_LABEL_SUBSET])
    if groups is not None:
        codes, sizes, group_labels = _group_strata(labels, groups, "label_subset")
        kept = []
        for c in np.unique(group_labels):
            order = rng.permutation(np.flatnonzero(group_labels == c))
            target = max(1, _round_half_up(fraction * sizes[order].sum()))
            kept.append(order[: _closest_prefix(sizes[order], target, 1, len(order))])
        chosen = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        return np.flatnonzero(np.isin(codes, chosen)).astype(np.int64)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(1, _round_half_up(fraction * len(idx))))
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)
