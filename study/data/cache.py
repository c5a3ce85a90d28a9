"""The decode cache: `load_dataset` decodes every image once into arrays kept in an `.npz` keyed by the
content fingerprint and image size; `check_and_cache` checks and fills the cache from one decoding pass."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from study.data.checks import CheckReport, scan
from study.data.discovery import Resolved, resolve
from study.data.fingerprinting import fingerprint_entries
from study.data.images import FileResult
from study.data.source import SPLITS, DataError, DataSource, as_source

__all__ = ["DecodedData", "Split", "check_and_cache", "default_cache_dir", "load_dataset"]

MIN_IMAGE_SIZE = 16
# Bump when decoding or resizing changes, so stale caches are not reused.
LOADER_VERSION = 1


@dataclass
class Split:
    """One split. images: uint8 (N, S, S, 3) RGB; labels: int64 (N,), 0 = benign, 1 = malignant;
    paths: N file paths relative to the dataset folder (for a labels CSV: to its images folder), POSIX
    separators, in sorted order; groups: str (N,) group ids (lesion or patient) of a labels CSV with a group
    column, else None (every image its own group)."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DecodedData:
    """A decoded dataset. root: the dataset folder or labels CSV; notes: one line per conversion performed
    (mode, bit depth, crop, upsampling); warnings: every warning of the dataset check (conversions included)."""

    train: Split
    test: Split
    fingerprint: str
    root: str
    image_size: int
    notes: list[str]
    warnings: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    """$STUDY_CACHE_DIR, else ~/.cache/melanoma-ssl-study."""
    env = os.environ.get("STUDY_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "melanoma-ssl-study"


def _cache_path(cache_dir: Path, fp: str, image_size: int) -> Path:
    return cache_dir / "decoded" / f"{fp}-{image_size}px-v{LOADER_VERSION}.npz"


def _split_from(results: list[FileResult], split: str, image_size: int, grouped: bool) -> Split:
    rs = [r for r in results if r.entry.split == split]
    images = np.stack([r.array for r in rs]) if rs else np.zeros((0, image_size, image_size, 3), np.uint8)
    groups = np.array([r.entry.group for r in rs], dtype=str) if grouped else None
    labels = np.array([r.entry.label for r in rs], dtype=np.int64)
    return Split(images, labels, [r.entry.rel for r in rs], groups)


def _save_cache(path: Path, data: DecodedData) -> None:
    """Atomic: write a temp file in the same folder, then os.replace; racing writers write identical bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "notes": data.notes,
        "warnings": data.warnings,
        "fingerprint": data.fingerprint,
        "image_size": data.image_size,
        "loader_version": LOADER_VERSION,
    }
    arrays = {}
    for name, split in (("train", data.train), ("test", data.test)):
        arrays[f"{name}_images"] = split.images
        arrays[f"{name}_labels"] = split.labels
        arrays[f"{name}_paths"] = np.array(split.paths, dtype=str)
        if split.groups is not None:  # absent for folder data (caches written before groups stay valid)
            arrays[f"{name}_groups"] = np.asarray(split.groups, dtype=str)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_cache(path: Path, root: str, fp: str, image_size: int) -> DecodedData:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        splits = {}
        for s in SPLITS:
            images, labels, paths = z[f"{s}_images"], z[f"{s}_labels"], [str(p) for p in z[f"{s}_paths"]]
            groups = z[f"{s}_groups"] if f"{s}_groups" in z.files else None
            consistent = len(images) == len(labels) == len(paths)
            if groups is not None:
                consistent = consistent and groups.shape == (len(paths),)
            if images.shape[1:] != (image_size, image_size, 3) or not consistent:
                raise ValueError(f"inconsistent arrays for split {s}")
            splits[s] = Split(images, labels.astype(np.int64), paths, groups)
    if meta.get("fingerprint") != fp or meta.get("image_size") != image_size:
        raise ValueError("cache metadata does not match its file name")
    return DecodedData(splits["train"], splits["test"], fp, root, image_size, meta["notes"], meta["warnings"])


def load_dataset(
    source: str | Path | DataSource, image_size: int, cache_dir: str | Path | None = None
) -> DecodedData:
    """Decode every image of a dataset (a folder, or a labels CSV: a path or a DataSource) once into uint8
    (N, image_size, image_size, 3) RGB arrays, cached on disk.

    Each image is converted to 8-bit RGB (see check_dataset), centre-cropped to its largest square (non-square
    images lose the ends of their long side; nothing is stretched) and resized with PIL's Lanczos filter
    (antialiased when shrinking). Images are ordered by sorted relative path within each split; a labels CSV
    with a group column also gives each split's `groups`.
    The arrays are cached in `cache_dir/decoded/<fingerprint>-<size>px-v<loader version>.npz` (default
    cache_dir: $STUDY_CACHE_DIR or ~/.cache/melanoma-ssl-study); a later call with unchanged files (and, for a
    CSV, unchanged labels, groups and splits) loads the cache without decoding. Raises DataError listing every
    problem when the dataset is unusable.
    """
    is_int = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not is_int or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"load_dataset: image_size must be an integer >= {MIN_IMAGE_SIZE} pixels, got {image_size!r}"
        )
    image_size = int(image_size)
    src = as_source(source)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    res = resolve(src)
    cache_note: list[str] = []
    # Structural problems (and a CSV's) are re-checked on every call (listings, parsing); everything decoding
    # finds is a function of the files' bytes, which the fingerprint in the cache key covers.
    if not res.listing.problems:
        fp = fingerprint_entries(res)
        path = _cache_path(cache_dir, fp, image_size)
        if path.is_file():
            try:
                return _load_cache(path, src.path, fp, image_size)
            except Exception as e:  # noqa: BLE001 — a damaged cache is rebuilt, and the rebuild is noted
                cache_note.append(f"cache file {path} was unreadable ({type(e).__name__}: {e}); rebuilt it")
    report, results = scan(res, image_size)
    if not report.ok:
        raise DataError(report.problems, src.path)
    return _store_decoded(report, results, res, image_size, cache_dir, cache_note)


def check_and_cache(
    source: str | Path | DataSource, image_size: int, cache_dir: str | Path | None = None
) -> CheckReport:
    """`check_dataset` and, when the data is usable, `load_dataset`'s decoded cache, from one decoding pass.

    The study driver calls this once, so that trials on this machine load arrays instead of decoding.
    """
    res = resolve(as_source(source))
    report, results = scan(res, int(image_size))
    if report.ok:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        _store_decoded(report, results, res, int(image_size), cache, [])
    return report


def _store_decoded(
    report: CheckReport,
    results: list[FileResult],
    res: Resolved,
    image_size: int,
    cache_dir: Path,
    cache_note: list[str],
) -> DecodedData:
    """The DecodedData of a clean scan, written to the cache (a failed write is noted, not raised)."""
    data = DecodedData(
        train=_split_from(results, "train", image_size, res.has_groups),
        test=_split_from(results, "test", image_size, res.has_groups),
        fingerprint=report.fingerprint,
        root=res.source.path,
        image_size=image_size,
        notes=list(report.conversions),
        warnings=report.warnings,
    )
    path = _cache_path(cache_dir, data.fingerprint, image_size)
    try:
        _save_cache(path, data)
        # Notes about this call's cache handling are not properties of the data: added after saving.
        data.notes[:0] = cache_note
    except OSError as e:
        data.notes.append(
            f"could not write cache {path} ({type(e).__name__}: {e}); set STUDY_CACHE_DIR to a writable "
            "folder"
        )
    return data
