"""Which files of a run directory hold pickles, and proof that this user's own runs wrote them.

A Ray Tune run directory contains code: `tuner.pkl`, the search algorithm's state and parts of
`experiment_state-*.json` are (cloud)pickles, and `Tuner.restore` executes whatever they hold. A run directory
from elsewhere (a download, a shared drive, a colleague's bucket) must therefore never be restored blindly.

The driver records an HMAC-SHA256 of every such file whenever Tune writes it, keyed with a per-user secret
(`key_file()`: created on first use, mode 0600). `study resume` verifies them before `Tuner.restore` and refuses
a file that does not match unless the user passes `--trust-run-dir`. `study report` never unpickles anything
(it reads Tune's JSON and CSV records), so it needs no signature.

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
from collections.abc import Iterable
from pathlib import Path

SIGNATURES = ".signatures.json"
KEY_NAME = "run-signing.key"
KEEP = 4  # digests remembered per file
# Top-level files of a run that Tune unpickles on restore (besides any `*.pkl`).
STATE_PATTERNS = ("experiment_state-*.json", "basic-variant-state-*.json", "searcher-state-*")
# A trial's pickled error, read back by Tune's ResultGrid.
TRIAL_PICKLES = ("error.pkl",)


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


def pickle_complete(data: bytes) -> bool:
    """Whether `data` is one whole pickle, judged by reading its opcodes; nothing is executed."""
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001 - any parse failure means "not a whole pickle"
        return False
    return bool(ops) and ops[-1][0].name == "STOP" and ops[-1][2] + 1 == len(data)


def protected_names(names: Iterable[str]) -> list[str]:
    """Of the run-relative file names `names` (posix, `trial/error.pkl` style), those Tune unpickles."""
    from fnmatch import fnmatch

    out = []
    for name in names:
        parts = name.split("/")
        if len(parts) == 1 and (name.endswith(".pkl") or any(fnmatch(name, p) for p in STATE_PATTERNS)):
            out.append(name)
        elif len(parts) == 2 and parts[1] in TRIAL_PICKLES:
            out.append(name)
    return sorted(out)


def protected_files(root: Path) -> list[str]:
    """The files of local run directory `root` that Tune unpickles (see `protected_names`)."""
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_file()]
    names += [
        f"{d.name}/{n}" for d in root.iterdir() if d.is_dir() for n in TRIAL_PICKLES if (d / n).is_file()
    ]
    return protected_names(names)


def parse_signatures(raw: bytes) -> dict[str, list[str]]:
    """The digests in the text of a signature file; ValueError when it is not one."""
    try:
        files = json.loads(raw)["files"]
        return {str(k): [str(x) for x in v] for k, v in files.items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a signature file ({exc})") from None


def read_signatures(path: Path) -> dict[str, list[str]]:
    """The digests recorded in signature file `path` ({} when missing or unreadable)."""
    try:
        return parse_signatures(path.read_bytes())
    except (OSError, ValueError):
        return {}


def write_signatures(path: Path, files: dict[str, list[str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
    os.replace(tmp, path)


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


def sign_dir(root: Path, key: bytes, extra: dict[str, str] | None = None) -> None:
    """Record the digests of `root`'s protected files (plus `extra`: name -> digest) in `root/.signatures.json`."""
    path = root / SIGNATURES
    signatures = read_signatures(path)
    changed = False
    for name in protected_files(root):
        changed |= record(signatures, name, digest(key, (root / name).read_bytes()))
    for name, hexdigest in (extra or {}).items():
        changed |= record(signatures, name, hexdigest)
    if changed or not path.exists():
        write_signatures(path, signatures)


def signed(signatures: dict[str, list[str]], key: bytes, name: str, data: bytes) -> bool:
    """Whether `data` is a version of `name` that `signatures` records for this key."""
    mine = digest(key, data)
    return any(hmac.compare_digest(mine, d) for d in signatures.get(name, []))


def unsigned_files(root: Path, key: bytes) -> list[str]:
    """The protected files of local run directory `root` whose contents carry no signature of `key`."""
    signatures = read_signatures(root / SIGNATURES)
    return [n for n in protected_files(root) if not signed(signatures, key, n, (root / n).read_bytes())]
