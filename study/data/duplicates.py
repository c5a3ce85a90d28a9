"""Exact (sha256) and near (perceptual hash) duplicates: train/test leakage, conflicting labels, copies."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from study.data.images import NEAR_DUPLICATE_HASH_SIZE, NEAR_DUPLICATE_MAX_DISTANCE, FileResult
from study.data.source import CLASSES

__all__ = ["MAX_EXAMPLES", "duplicate_findings"]

MAX_EXAMPLES = 5  # example pairs shown per duplicate warning


def _hamming_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All pairs (i < j, distance) of hashes uint64 (N, words) within max_distance bits, chunked so
    memory stays bounded for ~10k images."""
    out = []
    n, words = hashes.shape
    chunk = max(1, 2**22 // max(n * words, 1))
    for start in range(0, n, chunk):
        block = hashes[start : start + chunk, None, :] ^ hashes[None, :, :]
        dist = np.bitwise_count(block).sum(axis=2, dtype=np.int64)
        ii, jj = np.nonzero(dist <= max_distance)
        ii += start
        keep = ii < jj
        out.extend(zip(ii[keep].tolist(), jj[keep].tolist(), dist[ii[keep] - start, jj[keep]].tolist()))
    return sorted(out)


def duplicate_findings(results: list[FileResult]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(problems, warnings, duplicates dict) from exact (sha256) and near (phash) duplicates."""
    problems, exact_warns, exact_groups = _exact_duplicates(results)
    near_warns, near = _near_duplicates(results)
    dup = {
        "exact": exact_groups,
        "near": near,
        "near_max_distance": NEAR_DUPLICATE_MAX_DISTANCE,
        "hash_bits": NEAR_DUPLICATE_HASH_SIZE**2,
    }
    return problems, exact_warns + near_warns, dup


def _exact_duplicates(results: list[FileResult]) -> tuple[list[str], list[str], list[list[str]]]:
    """(problems, warnings, groups of paths with identical bytes): leakage across splits, conflicting labels
    and same-label copies within a split."""
    problems: list[str] = []
    warns: list[str] = []
    by_digest: dict[str, list[FileResult]] = defaultdict(list)
    for r in results:
        if r.digest is not None and r.nbytes > 0:
            by_digest[r.digest].append(r)
    exact_groups = []
    for group in by_digest.values():
        if len(group) < 2:
            continue
        exact_groups.append([r.entry.rel for r in group])
        first = group[0].entry
        split_first: dict[str, Any] = {}  # labels are compared within a split, leakage across splits
        for other in group:
            o = other.entry
            ref = split_first.setdefault(o.split, o)
            if o.split != first.split:
                test, train = (o, first) if o.split == "test" else (first, o)
                problems.append(
                    f"{test.name}: byte-identical to {train.name} (train/test leakage); remove it from test or "
                    "from train"
                )
            if ref is o:
                continue
            if o.label != ref.label:
                problems.append(
                    f"{o.name}: byte-identical to {ref.name} but labelled {CLASSES[o.label]} vs "
                    f"{CLASSES[ref.label]} (conflicting labels); keep the copy with the right label, "
                    "delete the other"
                )
            else:
                warns.append(
                    f"{o.name}: byte-identical to {ref.name} (same label, counted twice); delete one copy"
                )
    return problems, warns, exact_groups


def _near_duplicates(results: list[FileResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """(warnings, near pairs {"a", "b", "distance"}) from perceptual hashes; pairs with identical bytes are
    left to `_exact_duplicates`."""
    warns: list[str] = []
    hashed = [r for r in results if r.phash is not None]
    words = NEAR_DUPLICATE_HASH_SIZE**2 // 64
    hashes = np.array([r.phash for r in hashed], dtype=np.uint64).reshape(len(hashed), words)
    near = []
    leak_pairs, conflict_pairs, same_pairs = [], [], []
    for i, j, d in _hamming_pairs(hashes, NEAR_DUPLICATE_MAX_DISTANCE):
        a, b = hashed[i], hashed[j]
        if a.digest == b.digest:
            continue  # already reported as exact
        near.append({"a": a.entry.rel, "b": b.entry.rel, "distance": d})
        if a.entry.split != b.entry.split:
            test, train = (a, b) if a.entry.split == "test" else (b, a)
            leak_pairs.append((test.entry.name, train.entry.name, d))
        elif a.entry.label != b.entry.label:
            conflict_pairs.append((a.entry.name, b.entry.name, d))
        elif a.entry.group is None or a.entry.group != b.entry.group:
            # Images of one group (a lesion photographed twice) are expected to look alike, and grouped
            # splits keep them together: not warned about.
            same_pairs.append((a.entry.name, b.entry.name, d))
    bits = NEAR_DUPLICATE_HASH_SIZE**2
    criterion = f"phash Hamming distance <= {NEAR_DUPLICATE_MAX_DISTANCE} of {bits} bits"
    if leak_pairs:
        n_test = len({p[0] for p in leak_pairs})
        warns.append(
            f"{n_test} test image(s) have a near-duplicate in train (possible leakage; {criterion}), "
            f"e.g. {_pairs_text(leak_pairs)}; inspect them and remove one copy of true duplicates"
        )
    if conflict_pairs:
        warns.append(
            f"{len(conflict_pairs)} near-duplicate pair(s) within a split carry different labels (possible "
            f"label noise; {criterion}), e.g. {_pairs_text(conflict_pairs)}; "
            "inspect them"
        )
    if same_pairs:
        warns.append(
            f"{len(same_pairs)} near-duplicate pair(s) within a split with the same label (in train, a "
            "validation split may hold one copy while training sees the other), e.g. "
            f"{_pairs_text(same_pairs)}; inspect them"
        )
    return warns, near


def _pairs_text(pairs: list[tuple[str, str, int]]) -> str:
    shown = "; ".join(f"{a} ~ {b} (d={d})" for a, b, d in pairs[:MAX_EXAMPLES])
    return shown + (f"; and {len(pairs) - MAX_EXAMPLES} more" if len(pairs) > MAX_EXAMPLES else "")
