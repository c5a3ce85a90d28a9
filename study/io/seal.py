"""Seals on the folders a trial writes and reads back: its checkpoints and the run's pretext-cache entries.

A checkpoint (`trial_state.json`, weights, optimizer state) and a pretext-cache entry (encoder weights, metrics)
are written by a trial and restored by a later one as they stand: an edited value would be trained on or
reported as measured. The trial that writes such a folder seals it: `SEAL` lists every file in it with an
HMAC-SHA256 of its run-relative name and bytes, keyed with the run's key (derived by the driver from the
user's signing key and the run's salt, `study.run.integrity.run_key`; a trial gets it through Tune's
`with_parameters`, never through a file of the run). The trial that reads one back checks the seal first
(`RunSeal.check`): a file added, removed or changed, or an entry that is not a regular file, is refused by
name. `trust` (`study resume --trust-run-dir`) accepts what is there, as for Tune's own state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from study.io.files import UnsafeFileError, parse_json, read_regular

SEAL = ".seal.json"
MAX_SEALED_FILES = 10_000  # a checkpoint holds a handful; a folder with more is not one of ours


def folder_files(folder: Path) -> tuple[list[str], list[str]]:
    """(regular files, other entries) under `folder` at any depth, as sorted folder-relative posix names; the
    seal itself excluded. A symlink is an other entry, whatever it points at, and is not followed."""
    files, other = [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs + names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                files.append(rel)
            elif not stat.S_ISDIR(mode):
                other.append(rel)
        if len(files) + len(other) > MAX_SEALED_FILES:
            break
    return sorted(f for f in files if f != SEAL), sorted(other)


def file_mac(key: bytes, name: str, data: bytes) -> str:
    """HMAC-SHA256 of a sealed file: its folder-relative `name` and its bytes (a renamed file does not match)."""
    return hmac.new(key, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def seal_folder(folder: Path, key: bytes) -> None:
    """Write `folder/SEAL`: the MAC of every regular file under `folder`. Called by the trial that wrote them."""
    files, other = folder_files(folder)
    if other:
        raise UnsafeFileError(f"{folder}: {other[0]} is not a regular file; a sealed folder holds files only")
    macs = {name: file_mac(key, name, read_regular(folder / name)) for name in files}
    (folder / SEAL).write_text(json.dumps({"version": 1, "files": macs}, indent=1, sort_keys=True))


def seal_problems(folder: Path, key: bytes, *, partial: bool = False) -> list[str]:
    """What is wrong with the seal of `folder` (empty when every file is as sealed): each entry names a file
    (folder-relative) and why. `partial`: a folder that may be cut short (a copy killed midway): files missing,
    the seal included, are not problems; a file added or changed still is."""
    try:
        recorded = parse_json(read_regular(folder / SEAL), SEAL)["files"]
        if not isinstance(recorded, dict):
            raise TypeError("files is not an object")
    except FileNotFoundError:
        return [] if partial else [f"{SEAL}: missing (the folder carries no seal)"]
    except (OSError, UnsafeFileError, KeyError, TypeError) as exc:
        return [f"{SEAL}: not a seal ({exc})"]
    files, other = folder_files(folder)
    problems = [f"{name}: not a regular file" for name in other]
    problems += [f"{name}: not in the seal (added)" for name in files if name not in recorded]
    problems += [
        f"{name}: sealed but missing" for name in sorted(recorded) if name not in files and not partial
    ]
    for name in files:
        if name in recorded and not _matches(key, name, folder / name, recorded[name]):
            problems.append(f"{name}: changed since it was sealed")
    return problems


def _matches(key: bytes, name: str, path: Path, recorded: object) -> bool:
    try:
        return hmac.compare_digest(file_mac(key, name, read_regular(path)), str(recorded))
    except (OSError, UnsafeFileError):
        return False


@dataclass(frozen=True)
class RunSeal:
    """The run's key as a trial holds it (`key` None: a trial run outside the study's driver, which seals and
    checks nothing) and whether the user trusts the run directory as it stands (`--trust-run-dir`)."""

    key: bytes | None = None
    trust: bool = False

    def seal(self, folder: Path) -> None:
        if self.key is not None:
            seal_folder(folder, self.key)

    def check(self, folder: Path, what: str) -> None:
        """Raise `UnsafeFileError` (one line, naming `what` and the first problem) unless `folder`'s files are
        as their writer sealed them."""
        if self.key is None or self.trust:
            return
        problems = seal_problems(folder, self.key)
        if problems:
            raise UnsafeFileError(
                f"{what}: {problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; it was "
                "not written by this run as it stands, so it is not restored. Delete it to recompute it, or "
                "resume with --trust-run-dir if you changed it yourself"
            )
