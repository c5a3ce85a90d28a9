"""Ray Tune's experiment state in a run directory: kept whole, signed, and checked before it is restored.

Tune rewrites its state files in place about once a second; a driver killed in the middle leaves them cut
short, and Tune would then silently start a new experiment, so local runs keep a backup (`backup_state`,
`repair_state`). The same files are pickles that `Tuner.restore` executes, so the driver signs them as Tune
writes them (`RunGuard`) and `study resume` checks the signatures first (`study.run.integrity`).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

from study.io import storage as store
from study.run import integrity
from study.spec.config import ConfigError

# Ray Tune's experiment state in a run directory. Tune rewrites these files in place about once a second; a
# driver killed in the middle leaves them cut short, and Tune would then silently start a new experiment.
STATE_PATTERNS = integrity.STATE_PATTERNS
STATE_BACKUP = ".state-backup"
# Modules that runs written before the packages-by-stage layout (commit 16ab4ad) name in their tuner.pkl (the
# study's console and signing callbacks), and the modules that hold those classes now.
MOVED_MODULES = {"study.console": "study.run.console", "study.tune_state": "study.run.tune_state"}


def _state_intact(path: Path) -> bool:
    """Whether a state file is whole: JSON that parses, or a pickle whose opcodes end in STOP. Nothing is
    unpickled: a run directory from elsewhere may hold a crafted pickle."""
    try:
        raw = path.read_bytes()
        if path.name.startswith("experiment_state-"):
            json.loads(raw)
            return bool(raw)
        return integrity.pickle_complete(raw)
    except (OSError, ValueError):  # unreadable, or not JSON (UnicodeDecodeError is a ValueError)
        return False


def _state_files(run_dir: Path) -> list[Path]:
    return sorted(p for pattern in STATE_PATTERNS for p in run_dir.glob(pattern))


class RunGuard(tune.Callback):
    """A Tune callback that signs what Tune writes and keeps a backup of its state.

    Tune calls `get_state` from inside its experiment-state save, after writing the experiment and searcher
    state into its driver staging folder and before uploading that folder to the run: the moment to record
    their HMACs (`study.run.integrity`) in the same folder, so both travel together. Local runs also keep a copy of
    each intact, signed state file in `.state-backup`, refreshed as trials end (`backup_state`).

    Where the run lives is read from the trials' storage, never stored: `Tuner.restore` unpickles this
    callback from tuner.pkl, and a moved run directory must not write to its old place.
    """

    def __init__(self) -> None:
        self._storage: Any = None
        self._tuner_digest: str | None = None
        self._unsigned_save = False

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: nothing of this driver's session
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def _learn_storage(self, trials: list) -> None:
        if self._storage is None and trials:
            self._storage = trials[0].storage

    def _local_run(self) -> Path | None:
        import pyarrow.fs as pafs

        if self._storage is None or not isinstance(self._storage.storage_filesystem, pafs.LocalFileSystem):
            return None
        return Path(self._storage.experiment_fs_path)

    def _sign(self) -> None:
        key = integrity.load_key()
        storage = self._storage
        if self._tuner_digest is None:  # written once, before the first trial
            with storage.storage_filesystem.open_input_stream(f"{storage.experiment_fs_path}/tuner.pkl") as f:
                self._tuner_digest = integrity.digest(key, f.read())
        staging = Path(storage.experiment_driver_staging_path)
        integrity.sign_dir(staging, key, extra={"tuner.pkl": self._tuner_digest})

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._learn_storage(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._learn_storage(trials)
        if self._unsigned_save and self._storage is not None:  # the first save came before any trial existed
            self._unsigned_save = False
            self._sign()

    def get_state(self) -> None:
        if self._storage is None:
            self._unsigned_save = True
        else:
            self._sign()
        return None  # nothing of ours to store in Tune's state

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._learn_storage(trials)
        run_dir = self._local_run()
        if run_dir is not None:
            backup_state(run_dir)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_trial_complete(iteration, trials, trial)


def backup_state(run_dir: Path) -> None:
    """Copy each intact state file of `run_dir` that carries this user's signature into `run_dir/.state-backup`
    (atomically, by rename), and sign the copies there."""
    files = _state_files(run_dir)
    if not files or not all(_state_intact(f) for f in files):
        return
    key = integrity.load_key()
    signatures = integrity.read_signatures(run_dir / integrity.SIGNATURES)
    backup = run_dir / STATE_BACKUP
    backup.mkdir(exist_ok=True)
    for f in files:
        if not integrity.signed(signatures, key, f.name, f.read_bytes()):
            continue  # not (yet) the version this run signed: keep the older backup
        tmp = backup / f"{f.name}.tmp"
        shutil.copyfile(f, tmp)
        if _state_intact(tmp):
            os.replace(tmp, backup / f.name)
    integrity.sign_dir(backup, key)


def repair_state(run_dir: Path, *, trust: bool = False) -> None:
    """Before `Tuner.restore` of a local run: every file Tune will unpickle must be whole and signed by this
    user (`study.run.integrity`), else its signed backup is put back, else stop with one line.

    `trust` (`--trust-run-dir`) accepts whole files that carry no signature (a run copied from another machine
    or user); a file cut short still needs its backup.
    """
    key = integrity.load_key()
    signatures = integrity.read_signatures(run_dir / integrity.SIGNATURES)
    backup = run_dir / STATE_BACKUP
    saved_signatures = integrity.read_signatures(backup / integrity.SIGNATURES)
    for name in integrity.protected_files(run_dir):
        f = run_dir / name
        intact = _state_intact(f) if "/" not in name else integrity.pickle_complete(f.read_bytes())
        if intact and (trust or integrity.signed(signatures, key, name, f.read_bytes())):
            continue
        saved = backup / name
        if (
            saved.is_file()
            and _state_intact(saved)
            and integrity.signed(saved_signatures, key, name, saved.read_bytes())
        ):
            shutil.copyfile(saved, f)
            why = "was cut short" if not intact else "is not the version this run last signed"
            print(
                f"Restored {name} from its backup ({name} {why}): trials that finished after the backup run "
                "again.",
                flush=True,
            )
            continue
        if not intact:
            raise ConfigError(
                f"{run_dir}: Ray Tune's state file {name} was cut short (the driver was killed while saving "
                "it) and has no intact backup; start the study again with `study run` (pretexts are cached)"
            )
        raise ConfigError(untrusted_message(f"{run_dir}/{name}", str(run_dir)))


def untrusted_message(file: str, run: str) -> str:
    return (
        f"{file}: not written by your own study runs (no matching signature); a Ray Tune run directory holds "
        "pickled code that `study resume` would run. Resume it only if you trust where it came from: "
        f"`study resume {run} --trust-run-dir`"
    )


def check_remote_signatures(run_uri: str, *, trust: bool) -> None:
    """For a run at a URI: every file Tune will unpickle must carry this user's signature (see `repair_state`)."""
    import pyarrow.fs as pafs

    if trust:
        return
    fs, root = store.filesystem(run_uri)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = [i.base_name for i in infos if i.type == pafs.FileType.File]
    candidates = [
        f"{i.base_name}/{n}"
        for i in infos
        if i.type == pafs.FileType.Directory
        for n in integrity.TRIAL_PICKLES
    ]
    found = fs.get_file_info([f"{root}/{c}" for c in candidates]) if candidates else []
    names += [c for c, i in zip(candidates, found) if i.type == pafs.FileType.File]

    def read(name: str) -> bytes:
        with fs.open_input_stream(f"{root}/{name}") as f:
            return f.read()

    key = integrity.load_key()
    signatures = {}
    if integrity.SIGNATURES in names:
        try:
            signatures = integrity.parse_signatures(read(integrity.SIGNATURES))
        except ValueError:
            signatures = {}
    for name in integrity.protected_names(names):
        if not integrity.signed(signatures, key, name, read(name)):
            raise ConfigError(untrusted_message(f"{run_uri}/{name}", run_uri))


@contextmanager
def moved_modules() -> Iterator[None]:
    """While `Tuner.restore` unpickles a run's state, the module names of `MOVED_MODULES` lead to the modules
    that hold those classes now, so a run written before the move resumes (Tune then saves it with the new
    names). Only names that nothing else provides are set, and they are removed afterwards."""
    added = [old for old in MOVED_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(MOVED_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)
