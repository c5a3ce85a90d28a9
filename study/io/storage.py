"""Where run directories live: a local or NFS folder, or an object-store URI (`s3://bucket/prefix`).

Ray Tune writes the experiment, trial results and checkpoints there itself (`RunConfig(storage_path=...)`).
This module gives the driver and the trials the few file operations they need on top of that (study.json,
the tables and report, the shared pretext cache), through pyarrow's filesystems: the layer Tune itself uses,
so both resolve a URI, credentials and endpoint the same way. S3-compatible servers (MinIO, Ceph, moto) are
reached with the standard `AWS_ENDPOINT_URL` environment variable; credentials come from the usual AWS chain
(environment, ~/.aws, an EC2 instance profile).

A location is a plain string: an absolute local path or a URI. Functions here take and return strings.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from study.spec.config import ConfigError

# pyarrow.fs is imported inside the functions that use it: the import takes about 0.2 s, and the modules that
# import this one for its path helpers (is_uri, join) would otherwise pay it where no file is touched.

# What a user must check when a URI does not work: named in every error about remote storage.
_REMOTE_FIX = (
    "check the bucket exists and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws or an "
    "instance profile); for an S3-compatible server set AWS_ENDPOINT_URL"
)


def is_uri(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations other than `file://` (those are read through pyarrow)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def normalize(location: str | os.PathLike) -> str:
    """A URI without a trailing slash, or an absolute local path (`~` expanded, `file://` stripped)."""
    text = str(location)
    if is_uri(text):
        scheme, _, rest = text.partition("://")
        if not rest.strip("/"):
            raise ConfigError(f"{text}: a {scheme}:// location needs a bucket, e.g. {scheme}://BUCKET/runs")
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return str(Path(text).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """`location/part/...` for URIs and local paths alike."""
    if is_uri(location):
        return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(location, *parts))


def basename(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def filesystem(location: str):
    """(pyarrow FileSystem, path inside it) for a location. Raises ConfigError for an unusable URI."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), normalize(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (OSError, ValueError, TypeError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise ConfigError(f"--storage: cannot use {location} ({exc}); use an s3:// URI or a folder") from exc


def exists(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def download_file(location: str, dest: str | Path) -> None:
    """Copy one file at `location` (URI or local path) to the local path `dest`."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)


def write_text(location: str, text: str) -> None:
    fs, path = filesystem(location)
    if not is_uri(location):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def upload(local_dir: str | Path, location: str, names: list[str] | None = None) -> None:
    """Copy `local_dir` (or only its entries `names`, files or folders) into `location`, overwriting."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    local = pafs.LocalFileSystem()
    for name in names if names is not None else sorted(os.listdir(local_dir)):
        src = Path(local_dir, name)
        if not src.exists():
            continue
        dst = f"{path.rstrip('/')}/{name}"
        if src.is_dir():
            fs.create_dir(dst, recursive=True)
        pafs.copy_files(str(src), dst, source_filesystem=local, destination_filesystem=fs)


def download(location: str, local_dir: str | Path, names: list[str] | None = None) -> list[str]:
    """Copy `location` (or only its entries `names` that exist) into `local_dir`; returns what was copied."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    local = pafs.LocalFileSystem()
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    if names is None:
        names = [info.base_name for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))]
    copied = []
    for name in names:
        src = f"{path.rstrip('/')}/{name}"
        info = fs.get_file_info(src)
        if info.type == pafs.FileType.NotFound:
            continue
        dst = Path(local_dir, name)
        if info.type == pafs.FileType.Directory:
            dst.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(src, str(dst), source_filesystem=fs, destination_filesystem=local)
        copied.append(name)
    return copied


def check_writable(location: str) -> None:
    """Fail at start, not mid-study, when results cannot be written (unwritable path or bucket, full disk)."""
    if not is_uri(location):
        return _check_local(Path(location))
    probe = join(location, f".write-probe-{uuid.uuid4().hex}")
    try:
        fs, path = filesystem(probe)
        with fs.open_output_stream(path) as f:
            f.write(b"x")
        fs.delete_file(path)
    except OSError as exc:
        raise ConfigError(
            f"--storage: cannot write to {location} ({_first_line(exc)}); {_REMOTE_FIX}"
        ) from exc


def _check_local(storage: Path) -> None:
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--storage: cannot write to {storage} ({exc.strerror or exc}); choose a writable folder"
        ) from exc
    free = shutil.disk_usage(storage).free
    if free < 200 * 2**20:
        raise ConfigError(f"--storage: only {free / 2**20:.0f} MiB free at {storage}; free space or move it")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
