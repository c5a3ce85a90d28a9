"""Writing a run directory's files without following symlinks planted in it (a run may come from elsewhere)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


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
