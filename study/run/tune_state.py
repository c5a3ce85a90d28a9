"""Ray Tune's experiment state in a run directory: kept whole, signed, and checked before it is restored.

Tune rewrites its state files in place about once a second; a driver killed in the middle leaves them cut
short, and Tune would then silently start a new experiment, so local runs keep a backup (`backup_state`,
`repair_state`). The same files are pickles that `Tuner.restore` executes, so the driver signs them as Tune
writes them (`RunGuard`) and `study resume` checks the signatures first (`study.run.integrity`).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

from study.io import storage as store
from study.io.files import MAX_READ_BYTES, UnsafeFileError, parse_json, read_regular, write_replacing
from study.io.seal import RunSeal, seal_problems
from study.run import integrity
from study.run.rundir import LOOKS_FILE, RUN_SALT, STUDY_FILE
from study.spec.config import PRETEXT_CACHE, ConfigError

STATE_BACKUP = ".state-backup"
# Signed files of a run that Tune does not rewrite as it runs (no backup kept): the Tuner, the study record and
# the record of its looks (each rewritten only before a look's Tuner starts).
WRITTEN_ONCE = ("tuner.pkl", STUDY_FILE, LOOKS_FILE)
# Modules that runs written before the packages-by-stage layout (commit 16ab4ad) name in their tuner.pkl (the
# study's console and signing callbacks), and the modules that hold those classes now.
MOVED_MODULES = {"study.console": "study.run.console", "study.tune_state": "study.run.tune_state"}


def _whole(data: bytes) -> bool:
    """Whether a state file's bytes are whole: JSON that parses (within the depth bound), or a pickle whose
    opcodes end in STOP. Nothing is unpickled: a run directory from elsewhere may hold a crafted pickle."""
    if integrity.pickle_complete(data):
        return True
    try:
        parse_json(data, "state")
        return bool(data)
    except UnsafeFileError:
        return False


def _read(path: Path) -> bytes | None:
    """A regular file's bytes; None when missing, unreadable or not a regular file."""
    try:
        return read_regular(path)
    except (OSError, UnsafeFileError):
        return None


def _state_files(run_dir: Path, signatures: dict[str, list[str]]) -> list[Path]:
    """Tune's state files of a run: every top-level file the run signed that Tune rewrites as it runs,
    whatever its name."""
    names = integrity.protected_files(run_dir)
    return [run_dir / n for n in names if "/" not in n and n in signatures and n not in WRITTEN_ONCE]


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
        self._written_once: dict[str, str] | None = None
        self._memo: dict[str, tuple[int, int, str]] = {}
        self._inherited: dict[str, list[str]] = {}
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
        if self._written_once is None:  # tuner.pkl and study.json: written before the first trial
            self._written_once = {}
            for name in WRITTEN_ONCE:
                try:
                    path = f"{storage.experiment_fs_path}/{name}"
                    with storage.storage_filesystem.open_input_stream(path) as f:
                        self._written_once[name] = integrity.digest(key, f.read())
                except FileNotFoundError:  # a Tuner run without the study's driver (tests)
                    pass
            self._inherited = self._run_signatures()
        staging = Path(storage.experiment_driver_staging_path)
        # Every file Tune staged, whatever its name (the search algorithm's state included), is signed.
        integrity.sign_dir(staging, key, extra=self._written_once, memo=self._memo, inherit=self._inherited)

    def _run_signatures(self) -> dict[str, list[str]]:
        """The signatures already in the run (an earlier experiment's: the run resumed, or a look of `study
        extend`); verified file by file before this driver restored or extended it."""
        storage = self._storage
        try:
            path = f"{storage.experiment_fs_path}/{integrity.SIGNATURES}"
            with storage.storage_filesystem.open_input_stream(path) as f:
                return integrity.parse_signatures(f.read(MAX_READ_BYTES))
        except (OSError, ValueError):
            return {}

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
    """Copy each whole state file of `run_dir` that carries this user's signature into `run_dir/.state-backup`
    (atomically, by rename), and sign the copies there."""
    signatures = integrity.read_signatures(run_dir / integrity.SIGNATURES)
    files = _state_files(run_dir, signatures)
    contents = {f.name: _read(f) for f in files}
    if not files or not all(data is not None and _whole(data) for data in contents.values()):
        return
    key = integrity.load_key()
    backup = run_dir / STATE_BACKUP
    backup.mkdir(exist_ok=True)
    for name, data in contents.items():
        if not integrity.signed(signatures, key, name, data):
            continue  # not (yet) the version this run signed: keep the older backup
        write_replacing(backup / name, lambda f, data=data: f.write(data))
    integrity.sign_dir(backup, key)


def repair_state(run_dir: Path, *, trust: bool = False) -> None:
    """Before `Tuner.restore` of a local run: every file Tune or the study will read back as code or settings
    (`integrity.must_sign`: whatever its name) must be a regular file, whole and signed by this user, else its
    signed backup is put back, else stop with one line naming the file.

    `trust` (`--trust-run-dir`) accepts files that carry no signature (a run copied from another machine or
    user); a state file cut short still needs its backup, and a symlink or FIFO is refused all the same.
    """
    foreign = integrity.foreign_entries(run_dir)
    if foreign:  # at any depth: Tune and the trainable would write through a link or block on a FIFO
        raise ConfigError(
            f"{run_dir}/{foreign[0]}: is a symbolic link or not a regular file (a FIFO, a socket)"
            + (f", and {len(foreign) - 1} more" if len(foreign) > 1 else "")
            + "; a run folder holds its own files only: move it out of the run folder and resume again"
        )
    found = integrity.must_sign(integrity.scan_local(run_dir))
    for name, why in found.refused.items():
        raise ConfigError(f"{run_dir}/{name}: {why}; move it out of the run folder and resume again")
    key = integrity.load_key()
    signatures = integrity.read_signatures(run_dir / integrity.SIGNATURES)
    for name in found.signed:
        f = run_dir / name
        try:
            data = read_regular(f)
        except UnsafeFileError as exc:
            raise ConfigError(f"{exc}; move it out of the run folder and resume again") from None
        whole = _whole(data)
        if whole and integrity.signed(signatures, key, name, data):
            continue
        if _restore_backup(run_dir, name, key, "was cut short" if not whole else None):
            continue
        if not whole and name in signatures:
            raise ConfigError(
                f"{run_dir}: Ray Tune's state file {name} was cut short (the driver was killed while saving "
                "it) or damaged, and has no intact backup; start the study again with `study run` (pretexts "
                "are cached)"
            )
        if not trust:
            raise ConfigError(untrusted_message(f"{run_dir}/{name}", str(run_dir)))


def run_seal(saved: dict[str, Any], *, trust: bool = False) -> RunSeal:
    """The seal a run's trials write and check (`study.io.seal`), from its study record's salt; without a salt
    (a run started before trials sealed their folders) the trials seal and check nothing."""
    salt = saved.get(RUN_SALT)
    return RunSeal(integrity.run_key(salt) if isinstance(salt, str) and salt else None, trust)


# Folders of a local run that a trial reads back: its checkpoints and complete pretext-cache entries.
_CHECKPOINT = re.compile(r"[^/.][^/]*/checkpoint_\d+")
_SEALED = (_CHECKPOINT, re.compile(re.escape(PRETEXT_CACHE) + r"/[0-9a-f]{24}"))


def sealed_folders(run_dir: Path) -> list[str]:
    """Run-relative names of the folders of local run `run_dir` that trials seal (see `_SEALED`)."""
    found = []
    for name, kind in integrity.scan_local(run_dir):
        if kind == integrity.DIR and any(p.fullmatch(name) for p in _SEALED):
            found.append(name)
    return sorted(found)


def check_sealed(run_dir: Path, seal: RunSeal) -> None:
    """Before `Tuner.restore` of a local run: every checkpoint and pretext-cache entry is as the trial that
    wrote it sealed it (a trial checks again before it reads one; this stops early, with one line). A file
    added to one or changed in one is refused by name; a folder cut short (files missing: a copy killed midway,
    never restored by Tune) is left to that check. A run with no salt holds no seals: refused unless trusted."""
    if seal.trust:
        return
    folders = sealed_folders(run_dir)
    if seal.key is None:
        if folders:
            raise ConfigError(unsealed_message(f"{run_dir}/{folders[0]}", str(run_dir)))
        return
    for name in folders:
        # Tune may leave a checkpoint copy unfinished (never restored); a cache entry is renamed in whole.
        bad = seal_problems(run_dir / name, seal.key, partial=bool(_CHECKPOINT.fullmatch(name)))
        if bad:
            raise ConfigError(
                f"{run_dir}/{name}/{bad[0]}: not written by this run as it stands, so it is not restored; move "
                f"the folder out of the run and start the study again, or resume with --trust-run-dir if you "
                "changed it yourself"
            )


def _restore_backup(run_dir: Path, name: str, key: bytes, why: str | None) -> bool:
    """Put the signed, whole backup of state file `name` back in place; whether there was one."""
    if "/" in name or name in WRITTEN_ONCE:
        return False
    backup = run_dir / STATE_BACKUP
    saved = _read(backup / name)
    if saved is None or not _whole(saved):
        return False
    if not integrity.signed(integrity.read_signatures(backup / integrity.SIGNATURES), key, name, saved):
        return False
    write_replacing(run_dir / name, lambda f: f.write(saved))
    why = why or "is not the version this run last signed"
    print(
        f"Restored {name} from its backup ({name} {why}): trials that finished after the backup run again.",
        flush=True,
    )
    return True


def unsealed_message(where: str, run: str) -> str:
    return (
        f"{where}: the run was started before trials sealed their checkpoints and pretext-cache entries "
        "(study.json holds no run salt), so nothing shows they are as written; resume it only if you trust "
        f"where it came from: `study resume {run} --trust-run-dir`"
    )


def untrusted_message(file: str, run: str) -> str:
    return (
        f"{file}: not written by your own study runs (no matching signature); a Ray Tune run directory holds "
        "pickled code and settings that `study resume` would run (a run started before study.json and every "
        "Tune file were signed needs the flag too). Resume it only if you trust where it came from: "
        f"`study resume {run} --trust-run-dir`"
    )


def check_remote_signatures(run_uri: str, *, trust: bool) -> None:
    """For a run at a URI: every file Tune or the study will read back (`integrity.must_sign`) must carry this
    user's signature (see `repair_state`)."""
    import pyarrow.fs as pafs

    if trust:
        return
    fs, root = store.filesystem(run_uri)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    kinds = {pafs.FileType.File: integrity.FILE, pafs.FileType.Directory: integrity.DIR}
    entries = {i.path[len(root) + 1 :]: i for i in infos if i.path.startswith(root + "/")}
    found = integrity.must_sign(
        (name, kinds.get(i.type, integrity.OTHER)) for name, i in entries.items() if name.count("/") <= 1
    )
    for name, why in found.refused.items():
        raise ConfigError(f"{run_uri}/{name}: {why}")

    def read(name: str) -> bytes:
        if (entries[name].size or 0) > MAX_READ_BYTES:
            raise ConfigError(
                f"{run_uri}/{name}: larger than the {MAX_READ_BYTES:,} bytes a run file may hold"
            )
        with fs.open_input_stream(f"{root}/{name}") as f:
            return f.read()

    key = integrity.load_key()
    signatures = {}
    if integrity.SIGNATURES in entries:
        try:
            signatures = integrity.parse_signatures(read(integrity.SIGNATURES))
        except ValueError:
            signatures = {}
    for name in found.signed:
        if not integrity.signed(signatures, key, name, read(name)):
            raise ConfigError(untrusted_message(f"{run_uri}/{name}", run_uri))


class RestoreFailed(Exception):
    """Tune failed to restore a run's experiment state (raised from `restored_or_stop`'s log filter)."""


#: The logger of Tune's controller, and the start of what it logs when a run's state does not restore.
_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
_RESTORE_FAILED = "Failed to restore the run state"


@contextmanager
def restored_or_stop(run_uri: str) -> Iterator[None]:
    """While Tune restores and continues a run: where Tune would log a traceback for a state it cannot restore
    and silently start the experiment afresh (every trial run again, the old ones lost from the results), the
    resume stops with one line (`ConfigError`, exit 2). Tune's fallback is seen as the log record it writes;
    a filter on that logger raises before any handler prints it."""

    def stop(record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_RESTORE_FAILED):
            raise RestoreFailed(record.exc_info[1] if record.exc_info else record.getMessage())
        return True

    logger = logging.getLogger(_CONTROLLER_LOGGER)
    logger.addFilter(stop)
    try:
        yield
    except RestoreFailed as exc:
        cause = exc.args[0] if exc.args else exc
        why = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise ConfigError(
            f"{run_uri}: Ray Tune could not restore the run's experiment state ({type(cause).__name__}: {why}); "
            "nothing was run. Its state files are damaged: start the study again with `study run` (pretexts "
            "are cached)"
        ) from None
    finally:
        logger.removeFilter(stop)


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
