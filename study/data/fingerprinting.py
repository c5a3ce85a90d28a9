"""The content fingerprint of a dataset, which keys the decoded and pretext caches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from study.data.discovery import Entry, Resolved, resolve
from study.data.source import DataError, DataSource, as_source

__all__ = ["UNREADABLE", "fingerprint", "fingerprint_entries", "fingerprint_records"]


def _file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex of the bytes); raises OSError when unreadable."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return path.stat().st_size, digest


UNREADABLE = "unreadable"


def _fingerprint_of(records: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for rel, size, digest in sorted(records):
        h.update(f"{rel}\t{size}\t{digest}\n".encode())
    return h.hexdigest()[:16]


_CSV_FINGERPRINT_TAG = b"labels-csv v1\n"


def _fingerprint_csv(records: list[tuple[Entry, int, str]]) -> str:
    """Over each image's path, size, bytes' sha256, split, label and group (not the CSV's other columns,
    its row order or its formatting)."""
    h = hashlib.sha256(_CSV_FINGERPRINT_TAG)
    for e, size, digest in sorted(records, key=lambda r: r[0].rel):
        h.update(json.dumps([e.rel, size, digest, e.split, e.label, e.group]).encode() + b"\n")
    return h.hexdigest()[:16]


def fingerprint_records(res: Resolved, records: list[tuple[Entry, int, str]]) -> str:
    """The fingerprint of (entry, size, sha256) records of every file of `res` (see `fingerprint`)."""
    if (
        res.table is None
    ):  # folders: labels are implied by the paths (the value is unchanged from before CSVs)
        return _fingerprint_of([(e.rel, size, digest) for e, size, digest in records])
    return _fingerprint_csv(records)


def fingerprint(source: str | Path | DataSource) -> str:
    """16-hex-digit sha256 of a dataset's content, which keys the decoded and pretext caches.

    Folder: over the sorted relative paths, sizes and sha256 of the bytes of every image file the loader
    would read (other files do not count). Labels CSV: over every usable row's image path (relative to the
    images folder), size, sha256 of its bytes, split, label and group — relabelling, regrouping or moving a row
    to the other split changes it; the CSV's other columns and row order do not. Changes when any byte, name
    or file changes. Raises DataError when the folder or the CSV does not exist, or the CSV cannot be read
    (its columns cannot be matched)."""
    src = as_source(source)
    root = Path(src.path)
    if not src.is_csv and not root.is_dir():
        raise DataError([f"{root}: dataset folder does not exist or is not a folder"], root)
    res = resolve(src)
    if res.table is not None and res.table.fatal:
        raise DataError(res.table.problems, root)
    return fingerprint_entries(res)


def fingerprint_entries(res: Resolved) -> str:
    """`fingerprint` of a resolved source, reading every file's bytes (an unreadable file counts as such)."""
    records = []
    for e in res.listing.entries:
        try:
            records.append((e, *_file_digest(res.read_root / e.rel)))
        except OSError:
            records.append((e, -1, UNREADABLE))
    return fingerprint_records(res, records)
