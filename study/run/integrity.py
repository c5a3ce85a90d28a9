"""Which files of a run directory Tune or the study read back, and proof that this user's own runs wrote them.

A Ray Tune run directory contains code: `tuner.pkl`, the search algorithm's state (`basic-variant-state-*`,
`search_gen_state-*`, `searcher-state-*`), a trial's `error.pkl` and parts of `experiment_state-*.json` are
(cloud)pickles, and `Tuner.restore` executes whatever they hold; `study.json` says where the study writes. A
run directory from elsewhere (a download, a shared drive, a colleague's bucket) must never be restored blindly.

Default deny, derived from what a run writes rather than from a list of Tune's file names (`must_sign`): every
regular file at the top of a run (Tune restores from whatever `.json` or `.pkl` is there) and every `*.pkl` in
a trial folder must carry this user's signature, except the dot-files of the bookkeeping (never matched by
Tune's globs) and the driver's own data outputs (`DATA_OUTPUTS`: tables, report, manifest; read back only as
validated data, and results.csv checked against the trials' own records). Anything at those places that is not
a regular file (a symlink out of the run, a FIFO) is refused outright.

The driver records an HMAC-SHA256 of each such file whenever Tune writes it (`sign_dir` on Tune's staging
folder: every file there, whatever its name), keyed with a per-user secret (`key_file()`: created on first
use, mode 0600). `study resume` verifies them before `Tuner.restore` and refuses a file that does not match,
by name, unless the user passes `--trust-run-dir`. `study report` never unpickles anything (it reads Tune's
JSON and CSV records as bounded data), so it needs no signature.

Signatures live next to the files, in `.signatures.json`: `{"version": 1, "files": {relpath: [hex, ...]}}`,
the last few digests of each file (the copy Tune uploads may lag its signature by one save).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickletools
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from study.io.files import UnsafeFileError, parse_json, read_regular, write_text_replacing

SIGNATURES = ".signatures.json"
KEY_NAME = "run-signing.key"
KEEP = 4  # digests remembered per file
# The driver's data outputs at the top of a run: rewritten from the trials' records at the end of a run, read
# back only as validated data (never unpickled, never by Tune), so not signed.
DATA_OUTPUTS = ("*.csv", "*.md", "*.html", "manifest.json")
# In a trial folder, what Tune may unpickle: its pickles (`error.pkl`, named by the signed experiment state).
TRIAL_SIGNED = ("*.pkl",)
# Kinds of directory entries, as `scan_local` and remote listings report them.
FILE, DIR, OTHER = "file", "dir", "other"


class UntrustedRunError(ValueError):
    """A pickled file of a run directory does not carry this user's signature."""


def key_file() -> Path:
    """$STUDY_CONFIG_DIR, else $XDG_CONFIG_HOME/melanoma-ssl-study, else ~/.config/melanoma-ssl-study; the key
    inside is `run-signing.key`."""
    root = os.environ.get("STUDY_CONFIG_DIR")
    if not root:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        root = str(Path(base) / "melanoma-ssl-study")
    return Path(root) / KEY_NAME


def load_key() -> bytes:
    """The user's signing key, created (32 random bytes, mode 0600) on first use."""
    path = key_file()
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another driver created it first
        return _read_key(path)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < 32:
        raise UntrustedRunError(f"{path}: signing key is shorter than 32 bytes; delete it to make a new one")
    return key


def digest(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def new_run_salt() -> str:
    """A run's salt (recorded in its signed study.json): what makes its key its own (`run_key`)."""
    return secrets.token_hex(16)


def run_key(salt: str) -> bytes:
    """The key a run's trials seal their checkpoints and pretext-cache entries with (`study.io.seal`): derived
    from the user's key and the run's salt, so a trial never holds the user's key and one run's sealed
    folders do not pass as another's."""
    return hmac.new(load_key(), b"run-seal\0" + salt.encode(), hashlib.sha256).digest()


def pickle_complete(data: bytes) -> bool:
    """Whether `data` is one whole pickle, judged by reading its opcodes; nothing is executed."""
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001 - any parse failure means "not a whole pickle"
        return False
    return bool(ops) and ops[-1][0].name == "STOP" and ops[-1][2] + 1 == len(data)


@dataclass
class RunFiles:
    """What `must_sign` finds in a run: the files that must carry a signature (run-relative posix names), and
    the entries refused whatever their contents (name -> why)."""

    signed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def is_data_output(name: str) -> bool:
    return any(fnmatch(name, p) for p in DATA_OUTPUTS)


def must_sign(entries: Iterable[tuple[str, str]]) -> RunFiles:
    """Of a run's entries (run-relative posix name, kind: FILE, DIR or OTHER, the kind of the entry itself, a
    symlink being OTHER), those Tune or the study would read back as code or settings, in two lists.

    Top level: every entry but dot-files and `DATA_OUTPUTS`; a regular file there must be signed, a folder is
    looked into (its `TRIAL_SIGNED` files must be signed), anything else (a symlink, a FIFO) is refused. One
    folder down: `TRIAL_SIGNED` names must be signed regular files. Deeper entries (checkpoints) are data the
    trial reads itself."""
    out = RunFiles()
    for name, kind in sorted(entries):
        parts = name.split("/")
        if any(p.startswith(".") for p in parts) or len(parts) > 2:
            continue
        if len(parts) == 1 and is_data_output(name):
            continue
        if len(parts) == 2 and not any(fnmatch(parts[1], p) for p in TRIAL_SIGNED):
            continue
        if kind == FILE:
            out.signed.append(name)
        elif kind == OTHER:
            out.refused[name] = (
                "is a symbolic link or not a regular file (a FIFO, a socket); a run folder holds its own "
                "files only, so it is not read"
            )
    return out


def _kind(mode: int) -> str:
    return FILE if stat.S_ISREG(mode) else DIR if stat.S_ISDIR(mode) else OTHER


def scan_local(root: Path) -> list[tuple[str, str]]:
    """The entries of local folder `root` that `must_sign` looks at: its top level and, in each real (not
    symlinked) subfolder that is not a dot-folder, the files one level down. Kinds come from `lstat`: a link
    is OTHER, whatever it points at."""
    entries: list[tuple[str, str]] = []
    try:
        top = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return entries
    for entry in top:
        kind = _kind(entry.stat(follow_symlinks=False).st_mode)
        entries.append((entry.name, kind))
        if kind == DIR and not entry.name.startswith("."):
            with os.scandir(entry.path) as inner:
                entries += [
                    (f"{entry.name}/{e.name}", _kind(e.stat(follow_symlinks=False).st_mode)) for e in inner
                ]
    return entries


def foreign_entries(root: Path, limit: int = 1_000_000) -> list[str]:
    """Run-relative names of every entry under local run `root`, at any depth (dot-folders, checkpoints and
    the pretext cache included), that is a symbolic link or neither a regular file nor a folder (a FIFO, a
    socket, a device): Tune and the trainable write through such entries or block on them, and a run never
    makes one. Stops looking after `limit` entries."""
    out: list[str] = []
    seen = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            seen += 1
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                out.append(os.path.relpath(path, root).replace(os.sep, "/"))
        if seen > limit:
            break
    return sorted(out)


def protected_files(root: Path) -> list[str]:
    """The files of local run directory `root` that must carry a signature (see `must_sign`)."""
    return must_sign(scan_local(root)).signed


def parse_signatures(raw: bytes) -> dict[str, list[str]]:
    """The digests in the text of a signature file; ValueError when it is not one (bounded in depth: the file
    comes with the run)."""
    try:
        files = parse_json(raw, SIGNATURES)["files"]
        return {str(k): [str(x) for x in v] for k, v in files.items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a signature file ({exc})") from None


def read_signatures(path: Path) -> dict[str, list[str]]:
    """The digests recorded in signature file `path` ({} when missing, unreadable, not a regular file or not
    one: a run with no valid signatures is then refused file by file)."""
    try:
        return parse_signatures(read_regular(path))
    except (OSError, ValueError):
        return {}


def write_signatures(path: Path, files: dict[str, list[str]]) -> None:
    write_text_replacing(path, json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))


def record(signatures: dict[str, list[str]], name: str, hexdigest: str) -> bool:
    """Add `hexdigest` as the newest digest of `name`; whether anything changed."""
    known = signatures.setdefault(name, [])
    if known and known[-1] == hexdigest:
        return False
    if hexdigest in known:
        known.remove(hexdigest)
    known.append(hexdigest)
    del known[:-KEEP]
    return True


def sign_dir(
    root: Path,
    key: bytes,
    extra: dict[str, str] | None = None,
    memo: dict[str, tuple[int, int, str]] | None = None,
    inherit: dict[str, list[str]] | None = None,
) -> None:
    """Record the digests of every file of `root` that `must_sign` names (plus `extra`: name -> digest) in
    `root/.signatures.json`. `memo` (name -> (size, mtime_ns, digest)) spares re-reading trial files that have
    not changed since the last call (top-level files, rewritten in place by Tune, are always read). `inherit`:
    the run's signatures when `root` is the staging folder of a later experiment in it (a resume, a look of
    `study extend`): its names that `root` does not hold are kept, so the upload does not drop them."""
    path = root / SIGNATURES
    signatures = read_signatures(path)
    changed = False
    for name, digests in (inherit or {}).items():
        if name not in signatures:
            signatures[name] = list(digests)[-KEEP:]
            changed = True
    for name in protected_files(root):
        changed |= record(signatures, name, _file_digest(root, name, key, memo))
    for name, hexdigest in (extra or {}).items():
        changed |= record(signatures, name, hexdigest)
    if changed or not path.exists():
        write_signatures(path, signatures)


def _file_digest(root: Path, name: str, key: bytes, memo: dict[str, tuple[int, int, str]] | None) -> str:
    if memo is None or "/" not in name:
        return digest(key, read_regular(root / name))
    info = os.stat(root / name, follow_symlinks=False)
    seen = memo.get(name)
    if seen is not None and seen[:2] == (info.st_size, info.st_mtime_ns):
        return seen[2]
    hexdigest = digest(key, read_regular(root / name))
    memo[name] = (info.st_size, info.st_mtime_ns, hexdigest)
    return hexdigest


def signed(signatures: dict[str, list[str]], key: bytes, name: str, data: bytes) -> bool:
    """Whether `data` is a version of `name` that `signatures` records for this key."""
    mine = digest(key, data)
    return any(hmac.compare_digest(mine, d) for d in signatures.get(name, []))


def unsigned_files(root: Path, key: bytes) -> list[str]:
    """The files of local run directory `root` that must be signed and carry no signature of `key`, and those
    refused whatever they hold (`must_sign`)."""
    signatures = read_signatures(root / SIGNATURES)
    found = must_sign(scan_local(root))
    out = list(found.refused)
    for name in found.signed:
        try:
            if not signed(signatures, key, name, read_regular(root / name)):
                out.append(name)
        except (OSError, UnsafeFileError):
            out.append(name)
    return sorted(out)
