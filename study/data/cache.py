"""The decode cache: `load_dataset` decodes every image once into arrays kept in a cache entry keyed by the
content fingerprint and image size (`decoded_store`: `.npy` files memory-mapped on open, so the trials of one
machine share one copy); `check_and_cache` checks and fills the cache from one decoding pass."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import study.data.decoded_store as decoded_store
from study.data.checks import CheckReport, scan
from study.data.discovery import Resolved, resolve
from study.data.fingerprinting import fingerprint_entries
from study.data.images import FileResult
from study.data.source import SPLITS, DataError, DataSource, as_source

__all__ = ["DecodedData", "Split", "check_and_cache", "default_cache_dir", "load_dataset"]

MIN_IMAGE_SIZE = 16
# Bump when decoding or resizing changes, so stale caches are not reused.
# 2: entries are folders of memory-mapped .npy files; the version-1 `.npz` files are not read (delete them).
LOADER_VERSION = 2


@dataclass
class Split:
    """One split. images: uint8 (N, S, S, 3) RGB (from the cache: a read-only memory map); labels: int64 (N,),
    0 = benign, 1 = malignant; paths: N file paths relative to the dataset folder (for a labels CSV: to its
    images folder), POSIX separators, in sorted order; groups: str (N,) group ids (lesion or patient) of a
    labels CSV with a group column, else None (every image its own group)."""

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
    """The entry folder of a dataset's decoded arrays at one size."""
    return cache_dir / "decoded" / f"{fp}-{image_size}px-v{LOADER_VERSION}"


def _split_from(results: list[FileResult], split: str, image_size: int, grouped: bool) -> Split:
    rs = [r for r in results if r.entry.split == split]
    images = np.stack([r.array for r in rs]) if rs else np.zeros((0, image_size, image_size, 3), np.uint8)
    groups = np.array([r.entry.group for r in rs], dtype=str) if grouped else None
    labels = np.array([r.entry.label for r in rs], dtype=np.int64)
    return Split(images, labels, [r.entry.rel for r in rs], groups)


def _save_cache(path: Path, data: DecodedData) -> None:
    """The entry folder `path` for `data` (`decoded_store.write_entry`: atomic, replacing an older entry)."""
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
        if split.groups is not None:  # absent for folder data
            arrays[f"{name}_groups"] = np.asarray(split.groups, dtype=str)
    decoded_store.write_entry(path, arrays, meta)


def _load_cache(path: Path, root: str, fp: str, image_size: int) -> DecodedData:
    """The entry folder `path`, its images memory-mapped (shared by every process of the machine that opens
    it); FileNotFoundError when there is none, ValueError (or UnsafeFileError) when it is damaged."""
    arrays, meta = decoded_store.open_entry(path)
    if (meta.get("fingerprint"), meta.get("image_size"), meta.get("loader_version")) != (
        fp,
        image_size,
        LOADER_VERSION,
    ):
        raise ValueError("cache metadata does not match its folder name")
    notes, warnings = meta.get("notes"), meta.get("warnings")
    if not all(isinstance(x, list) and all(isinstance(n, str) for n in x) for x in (notes, warnings)):
        raise ValueError("cache metadata: notes and warnings must be lists of text")
    splits = {}
    for s in SPLITS:
        try:
            images, labels, paths = arrays[f"{s}_images"], arrays[f"{s}_labels"], arrays[f"{s}_paths"]
        except KeyError as exc:
            raise ValueError(f"cache entry lacks the array {exc}") from None
        groups = arrays.get(f"{s}_groups")
        consistent = len(images) == len(labels) == len(paths) and labels.ndim == paths.ndim == 1
        if groups is not None:
            consistent = consistent and groups.shape == (len(paths),) and groups.dtype.kind == "U"
        if (
            images.dtype != np.uint8
            or images.shape[1:] != (image_size, image_size, 3)
            or labels.dtype != np.int64
            or paths.dtype.kind != "U"
            or not consistent
        ):
            raise ValueError(f"inconsistent arrays for split {s}")
        # labels, paths and groups are small: copied into memory; the images stay mapped
        splits[s] = Split(
            images, np.array(labels), [str(p) for p in paths], None if groups is None else np.array(groups)
        )
    return DecodedData(splits["train"], splits["test"], fp, root, image_size, notes, warnings)


def load_dataset(
    source: str | Path | DataSource, image_size: int, cache_dir: str | Path | None = None
) -> DecodedData:
    """Decode every image of a dataset (a folder, or a labels CSV: a path or a DataSource) once into uint8
    (N, image_size, image_size, 3) RGB arrays, cached on disk.

    Each image is converted to 8-bit RGB (see check_dataset), centre-cropped to its largest square (non-square
    images lose the ends of their long side; nothing is stretched) and resized with PIL's Lanczos filter
    (antialiased when shrinking). Images are ordered by sorted relative path within each split; a labels CSV
    with a group column also gives each split's `groups`.
    The arrays are cached in the folder `cache_dir/decoded/<fingerprint>-<size>px-v<loader version>/`
    (default cache_dir: $STUDY_CACHE_DIR or ~/.cache/melanoma-ssl-study); a later call with unchanged files
    (and, for a CSV, unchanged labels, groups and splits) loads the cache without decoding, its images
    memory-mapped read-only: every process of a machine that loads the dataset shares one copy in memory. One
    process at a time decodes a missing entry (a lock file beside it); a damaged entry is rebuilt, and the
    rebuild noted.
    Raises DataError listing every problem when the dataset is unusable.
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
        try:  # no lock: a folder under an entry's name is complete
            return _load_cache(path, src.path, fp, image_size)
        except Exception:  # noqa: BLE001 — none, or damaged: looked at again under the lock
            pass
        with decoded_store.writer_lock(path):
            try:  # another process may have written the entry meanwhile
                return _load_cache(path, src.path, fp, image_size)
            except FileNotFoundError:
                pass
            except Exception as e:  # noqa: BLE001 — a damaged cache is rebuilt, and the rebuild is noted
                cache_note.append(f"cache entry {path} was unreadable ({type(e).__name__}: {e}); rebuilt it")
            return _decode_and_store(res, image_size, cache_dir, cache_note)
    return _decode_and_store(res, image_size, cache_dir, cache_note)


def _decode_and_store(res: Resolved, image_size: int, cache_dir: Path, cache_note: list[str]) -> DecodedData:
    """Scan (DataError when unusable), write the cache, and give the written entry memory-mapped (the decoded
    arrays when it could not be written)."""
    report, results = scan(res, image_size)
    if not report.ok:
        raise DataError(report.problems, res.source.path)
    data = _store_decoded(report, results, res, image_size, cache_dir, cache_note)
    path = _cache_path(cache_dir, data.fingerprint, image_size)
    try:
        mapped = _load_cache(path, data.root, data.fingerprint, image_size)
    except Exception:  # noqa: BLE001 — not written (noted): the decoded arrays serve
        return data
    return dataclasses.replace(mapped, notes=data.notes)


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
        with decoded_store.writer_lock(_cache_path(cache, report.fingerprint, int(image_size))):
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
