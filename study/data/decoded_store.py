"""The decode cache's entries on disk: one folder of `.npy` arrays per entry, memory-mapped read-only on open,
so that every process on a machine that opens an entry shares one copy of its pages (the page cache).

An entry folder holds `<name>.npy` for every array and `meta.json`, written last, naming each array's shape,
dtype and CRC-32. It is written whole into a temporary folder beside it and renamed into place, so a folder
under an entry's name is complete; a writer replacing an entry moves the old folder aside first (processes
that have it mapped keep reading it). `open_entry` reads only what it checks: the folder and its files are
opened without following symlinks, FIFOs and devices are refused, each array's header, size and CRC-32 must
match `meta.json`, and no array is read with pickles (object dtypes are refused).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from study.io.files import UnsafeFileError, parse_json

META = "meta.json"
MAX_META_BYTES = 64 * 2**20  # notes and warnings, one line each: far below this for any real dataset
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
# Files opened relative to an open folder where the OS can (not on Windows: there, by path after an lstat).
_BY_FOLDER = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")


def crc32(a: np.ndarray) -> int:
    """CRC-32 of the C-ordered bytes of `a` (any shape and plain dtype; ~3.5 GB/s here, so checking a
    3.8 GB entry on open costs about a second)."""
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


@contextmanager
def writer_lock(entry: Path) -> Iterator[None]:
    """Hold `entry`'s lock file (`<entry>.lock` beside it) so that one process at a time decodes and writes
    that entry; without a writable folder there is no lock to take and nothing is held (the write that
    follows fails and says so)."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(entry) + ".lock")
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def write_entry(entry: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write `arrays` (name -> array; names lowercase identifiers, plain dtypes) and the JSON-able `meta` as
    the entry folder `entry`, replacing any entry (or symlink, or file) there. Atomic: readers see the old
    entry, no entry, or the new one whole. `meta` gains `"arrays"`: name -> shape, dtype, CRC-32."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-", suffix=".tmp"))
    try:
        specs = {}
        for name, a in arrays.items():
            if not _NAME.fullmatch(name) or a.dtype.hasobject:
                raise ValueError(f"array {name!r} ({a.dtype}): names are lowercase identifiers, dtypes plain")
            a = np.ascontiguousarray(a)
            with open(tmp / f"{name}.npy", "xb") as f:
                np.save(f, a, allow_pickle=False)
            specs[name] = {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": crc32(a)}
        (tmp / META).write_text(json.dumps({**meta, "arrays": specs}), encoding="utf-8")
        _swap_in(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful swap


def _swap_in(tmp: Path, entry: Path) -> None:
    """Rename the folder `tmp` to `entry`; whatever is at `entry` is moved aside first and removed after (a
    writer racing without the lock may have moved it, or put its own there, meanwhile: then try again)."""
    taken = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)
    while True:
        try:
            os.rename(tmp, entry)
            return
        except OSError as exc:
            if exc.errno not in taken:
                raise
        old = entry.with_name(f".{entry.name}-{secrets.token_hex(6)}.old")
        try:
            os.rename(entry, old)  # a symlink is moved as itself, its target untouched
        except FileNotFoundError:
            continue
        try:
            os.rename(tmp, entry)
            return
        except OSError as exc:
            if exc.errno not in taken:
                raise
        finally:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()


def open_entry(entry: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of the entry folder `entry`, each a read-only view of a memory map of its file (no copy:
    `a.base` is an `np.memmap`), and its meta (without `"arrays"`).

    FileNotFoundError when there is no entry; UnsafeFileError for a symlink or anything but a folder of
    regular files; ValueError naming the file for a missing or unreadable meta, or an array whose header,
    size or CRC-32 differs from what the meta recorded (a truncated, extended or edited file).
    """
    folder = _open_folder(entry)
    try:  # every file is opened relative to the folder opened above, even if the entry is replaced meanwhile
        try:
            meta = parse_json(_read_small(folder, META, entry), str(entry / META))
        except FileNotFoundError:
            raise ValueError(f"{entry / META} is missing: the entry is incomplete") from None
        specs = meta.pop("arrays", None) if isinstance(meta, dict) else None
        if not isinstance(specs, dict) or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in specs):
            raise ValueError(f"{entry / META}: no valid 'arrays' table")
        return {name: _map_array(folder, name, spec, entry) for name, spec in specs.items()}, meta
    finally:
        if folder is not None:
            os.close(folder)


def _open_folder(entry: Path) -> int | None:
    """A descriptor of the folder `entry`, opened without following a symlink (None where the OS has no
    folder descriptors, after checking `entry` is a folder)."""
    not_folder = f"{entry}: is not a folder (a symlink or a file); it is not read"
    if not _BY_FOLDER:
        if not stat.S_ISDIR(os.lstat(entry).st_mode):
            raise UnsafeFileError(not_folder)
        return None
    try:
        return os.open(entry, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFileError(not_folder) from None
        raise


def _open_regular(folder: int | None, name: str, entry: Path) -> int:
    """A file descriptor of the regular file `name` in the open folder `folder` (None: in `entry`, by path),
    no symlink followed, no FIFO waited on."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=folder) if folder is not None else os.open(entry / name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"{entry / name}: is a symbolic link; a cache file is read only as itself")
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{entry / name}: is not a regular file (a FIFO, socket or device); not read")
    return fd


def _read_small(folder: int | None, name: str, entry: Path) -> bytes:
    with os.fdopen(_open_regular(folder, name, entry), "rb") as f:
        data = f.read(MAX_META_BYTES + 1)
    if len(data) > MAX_META_BYTES:
        raise UnsafeFileError(f"{entry / name}: more than the {MAX_META_BYTES:,} bytes a cache meta may hold")
    return data


def _map_array(folder: int | None, name: str, spec: Any, entry: Path) -> np.ndarray:
    """The array `name`.npy, memory-mapped read-only, after checking it against its meta `spec`."""
    path = entry / f"{name}.npy"
    try:
        fd = _open_regular(folder, f"{name}.npy", entry)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    with os.fdopen(fd, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            readers = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            if version not in readers:
                raise ValueError(f"format version {version} is not one np.save writes for these arrays")
            shape, fortran, dtype = readers[version](f)
        except ValueError as exc:
            raise ValueError(f"{path}: not a .npy array ({exc})") from None
        want = (spec.get("shape"), spec.get("dtype")) if isinstance(spec, dict) else None
        if dtype.hasobject or fortran or want != (list(shape), dtype.str):
            raise ValueError(f"{path}: holds {dtype.str} {list(shape)}, the meta says {want}")
        offset, nbytes = f.tell(), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.fstat(fd).st_size
        if size != offset + nbytes:
            raise ValueError(f"{path}: {size:,} bytes where {offset + nbytes:,} were written (truncated?)")
        if nbytes == 0:
            a = np.empty(shape, dtype)
        else:
            a = np.asarray(np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape))
    if crc32(a) != spec.get("crc32"):
        raise ValueError(f"{path}: contents differ from what was written (CRC-32 mismatch)")
    a.flags.writeable = False
    return a
