"""A run directory's files, written without following symlinks planted in it and read back as data only (a run
may come from elsewhere): regular files only, bounded in size, JSON bounded in depth, names kept inside it."""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_replacing(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file without following a symlink at ``path``: ``write(f)`` fills a new temporary file in the
    same folder (created exclusively, so never through a link; mode 0666 less the umask, as ``open`` gives),
    which then replaces the name with ``os.replace``. A symlink at ``path`` is replaced by the new file, its
    target left untouched; readers never see a half-written file. Raises ``IsADirectoryError`` when ``path``
    is a folder. Returns ``path``."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"{path}: is a folder where a file is to be written")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_replacing(path: str | Path, text: str) -> Path:
    """UTF-8 `text` at `path`, as `write_replacing` writes."""
    data = text.encode("utf-8")
    return write_replacing(path, lambda f: f.write(data))


# ------------------------------------------------------------------------------------------ bounded reads
#: Largest file a run's records are read from (a 2,000-trial experiment state is a few hundred MB).
MAX_READ_BYTES = 1 << 30
#: Deepest nesting a run's JSON records may hold (Tune's and the study's are under 10 levels deep).
MAX_JSON_DEPTH = 64


class UnsafeFileError(ValueError):
    """A run file that is not read: a symlink, not a regular file (a FIFO, a device), too large, or JSON that
    is not UTF-8, does not parse or is nested too deep. The message names the file and says why."""


def read_regular(path: str | Path, *, limit: int = MAX_READ_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, opened without following a symlink there and without blocking
    on a FIFO (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``: what is opened is what is checked).

    ``UnsafeFileError`` for a symlink, anything but a regular file, or more than ``limit`` bytes;
    ``FileNotFoundError`` (an ``OSError``) when nothing is there."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(
                f"{path}: is a symbolic link; a run's files are read only as themselves"
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{path}: is not a regular file (a FIFO, socket or device); it is not read")
        if info.st_size > limit:
            raise UnsafeFileError(
                f"{path}: is {info.st_size:,} bytes, more than the {limit:,} a run file may hold"
            )
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise UnsafeFileError(f"{path}: grew past the {limit:,} bytes a run file may hold while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_json(data: bytes | str, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``data`` parsed as JSON, nested at most ``max_depth`` deep; ``UnsafeFileError`` naming ``what`` (a file)
    for text that is not UTF-8, not JSON, or nested deeper (never a ``RecursionError``)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text)
    except UnicodeDecodeError:
        raise UnsafeFileError(f"{what}: is not UTF-8 text") from None
    except RecursionError:
        raise UnsafeFileError(f"{what}: JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise UnsafeFileError(f"{what}: is not JSON ({exc})") from None
    if json_depth(value) > max_depth:
        raise UnsafeFileError(f"{what}: JSON nested deeper than {max_depth} levels")
    return value


def json_depth(value: Any) -> int:
    """How deep lists and dicts nest in ``value`` (0 for a scalar), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(path: str | Path, *, limit: int = MAX_READ_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A regular file's JSON, read with ``read_regular``'s checks and parsed with ``parse_json``'s."""
    return parse_json(read_regular(path, limit=limit), str(path), max_depth=max_depth)


def child_path(folder: str | Path, name: str) -> Path:
    """``folder / name`` for a ``name`` taken from a run's records: one plain path component (no ``/``, no
    ``..``, no NUL, not hidden), so the path stays inside ``folder``; ``UnsafeFileError`` otherwise."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in ("/", "\\", "\0"))
    ):
        raise UnsafeFileError(f"{name!r}: not a plain file name; nothing is written outside {folder}")
    return Path(folder) / name
