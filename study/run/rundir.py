"""A run directory's driver files: where they live, the study record, the manifest and the examples.

Run directory (= Tune's experiment directory, `STORAGE/NAME`; STORAGE is a folder or an `s3://` URI):
    study.json       the study as run (for `study resume`)
    results.csv      one row per trial x early-stopping regime (the analysis contract, `study.spec.schema`)
    history.csv      one row per epoch of each trial (fine-tune epochs from the final result)
    manifest.json    config, versions, data fingerprint and check, git revision, errors
    examples/        pretext inputs/targets/outputs of image tasks, for the report
    pretext_cache/   pretext weights shared between trials

With an object-store STORAGE the driver writes its files into a local copy (`runs/NAME` under the working
directory) and uploads them to the run URI; `study resume` / `study report` accept the URI.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

import study
from study.data.trial_source import pretext_root
from study.io import storage as store
from study.io.files import (
    UnsafeFileError,
    child_path,
    read_json,
    read_regular,
    write_replacing,
    write_text_replacing,
)
from study.run.integrity import new_run_salt
from study.spec.backend import backend_version
from study.spec.config import ConfigError, check_bounds
from study.spec.presets import StudyPreset
from study.spec.resolve import PRETEXT_CACHE

STUDY_FILE = "study.json"
# The record of a study's extensions (`study.run.extend`), written before each look's trials start.
LOOKS_FILE = "looks.json"
# study.json's field with the run's salt, from which the key its trials seal their folders with is derived.
RUN_SALT = "run_salt"
# The driver's own files of a run (the rest of a run directory is Ray Tune's): fetched for resume/report.
DRIVER_FILES = [STUDY_FILE, "results.csv", "history.csv", "manifest.json", "examples"]
# A pretext cache key (`study.trainables`: a hex digest), the name of its folder in the run's pretext cache.
PRETEXT_KEY = re.compile(r"[0-9a-f]{8,64}")
# A study record holds the study and its data check (a few KB; a large dataset's warnings, a few MB).
MAX_STUDY_BYTES = 64 << 20


def check_storage(storage: str | Path) -> None:
    """Fail at start, not mid-study, when results cannot be written (unwritable path or bucket, full disk)."""
    store.check_writable(store.normalize(storage))


def local_copy(run_uri: str) -> Path:
    """Where the driver writes a run's tables and report: the run itself, or `runs/NAME` for a URI."""
    return Path("runs").resolve() / store.basename(run_uri) if store.is_uri(run_uri) else Path(run_uri)


def open_run(run_dir: str | Path) -> tuple[str, Path]:
    """(run URI, local copy) of an existing run; for a URI the driver's files are downloaded first."""
    run_uri = store.normalize(run_dir)
    local = local_copy(run_uri)
    if store.is_uri(run_uri):
        store.download(run_uri, local, DRIVER_FILES)
    return run_uri, local


def publish(local: Path, run_uri: str) -> None:
    """Upload the driver's files of a run (tables, manifest, report) to its URI; nothing to do for folders."""
    if store.is_uri(run_uri):
        store.upload(local, run_uri)
        print(f"Uploaded results and report to {run_uri}", flush=True)


def holds_study(run_uri: str, local: Path) -> bool:
    """Whether a run (at its URI or in its local copy) was started already."""
    return store.exists(store.join(run_uri, STUDY_FILE)) or (local / STUDY_FILE).exists()


def write_study_record(
    local: Path, preset: StudyPreset, run_uri: str, data_root: str, check: Any
) -> dict[str, Any]:
    """`study.json`: the study as run, when it started, the data it runs on (with the data check) and the
    run's salt (`RUN_SALT`); returns what it wrote."""
    record = {
        "preset": preset.to_dict(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "run_uri": run_uri,
        "data_root": data_root,
        "data_check": check.to_dict(),
        "data_check_summary": check.format(),
        RUN_SALT: new_run_salt(),
    }
    write_text_replacing(local / STUDY_FILE, json.dumps(record, indent=2, default=str))
    return record


def load_study(run_dir: Path, run_uri: str | None = None) -> tuple[StudyPreset, dict[str, Any]]:
    """The study a run directory (its local copy `run_dir`, fetched from `run_uri`) was started with.

    `study.json` comes with the run: it is read as a bounded regular file, the study it records is rebuilt
    and checked like a study file's (every field within its bounds), and its pretext cache must be the run's
    own (`study resume` also needs its signature: `study.run.tune_state.repair_state`). `ConfigError`, one
    line naming the file, for anything else."""
    path = Path(run_dir) / STUDY_FILE
    where = f"{run_uri}/{STUDY_FILE}" if run_uri and store.is_uri(run_uri) else str(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(
            f"{run_uri or run_dir} is not a study run directory (no {STUDY_FILE}); "
            "pass the folder or URI `study run` printed, e.g. runs/demo-20260101-120000"
        )
    try:
        saved = read_json(path, limit=MAX_STUDY_BYTES)
    except (OSError, UnsafeFileError) as exc:
        raise ConfigError(f"{where}: cannot be read as the run's study record ({exc})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("preset"), dict):
        raise ConfigError(
            f"{where}: not a study record (a JSON object whose 'preset' is the study, as `study run` writes it)"
        )
    try:
        preset = StudyPreset.from_dict(saved["preset"])
        check_bounds(preset)
        check_bounds(preset.base, "trial.")
        if preset.search is not None:
            check_bounds(preset.search, "search.")
        if preset.base.pretext_cache_dir not in (None, PRETEXT_CACHE):
            raise ConfigError(
                f"trial.pretext_cache_dir: {preset.base.pretext_cache_dir!r}; a run's pretext cache is its own "
                f"{PRETEXT_CACHE!r} folder"
            )
    except ConfigError as exc:
        raise ConfigError(f"{where}: preset: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"{where}: preset: not a study this version can read ({type(exc).__name__}: {exc})"
        ) from None
    return preset, saved


def write_manifest(
    run_dir: Path,
    preset: StudyPreset,
    results: pd.DataFrame,
    errors: list[dict],
    run_uri: str,
    looks: list[dict[str, Any]] | None = None,
) -> None:
    """`manifest.json`: the study, versions, data and its check, git revision, timing, errors and (an
    extended study) its looks."""
    _, saved = load_study(run_dir)
    manifest = {
        "preset": preset.name,
        "config": preset.to_dict(),
        "versions": versions(preset.backend),
        "run_uri": run_uri,
        "data_root": saved.get("data_root"),
        "data_fingerprint": next(iter(results["data_fingerprint"].dropna()), None) if len(results) else None,
        "git_revision": git_revision(),
        "data_check": {"summary": saved.get("data_check_summary"), **(saved.get("data_check") or {})},
        "started": saved.get("started"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "n_trials": int(results["trial_id"].nunique()) if len(results) else 0,
        "errors": errors,
    }
    if looks:
        manifest["looks"] = looks
    write_text_replacing(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))


def versions(backend: str | None = None) -> dict[str, str]:
    """Versions of the code and the libraries it ran on; `keras_backend`: the backend the trials computed on
    (`backend`, the study's; None: this process's, as Keras resolves it), with its version
    (`spec.backend.backend_version`, e.g. "jax 0.10.2")."""
    out = {"melanoma-ssl-study": study.__version__, "keras_backend": backend_version(backend)}
    for dist in (
        "ray",
        "tensorflow-cpu",
        "tensorflow",
        "jax",
        "jaxlib",
        "torch",
        "keras",
        "numpy",
        "pandas",
        "scipy",
        "statsmodels",
        "scikit-image",
        "optuna",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
                check=True,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def copy_examples(run_dir: Path, results: pd.DataFrame, preset: StudyPreset, run_uri: str) -> None:
    """`examples/TASK_seedS.npz`: each pretext phase's examples from the run's pretext cache, for the report.

    Task, seed and cache key come from the trials' records: a name built from them must be one plain file
    name inside `examples/` (and the key a cache key), else `ConfigError`; nothing is written elsewhere."""
    if not len(results) or "pretext_key" not in results or not preset.base.pretext_cache_dir:
        return
    cache = pretext_root(preset.base, run_uri)
    out = run_dir / "examples"
    if out.is_symlink():  # never write through a link planted in the run directory
        out.unlink()
    for (task, seed, key), _ in results.groupby(["task", "seed", "pretext_key"], dropna=True):
        if not PRETEXT_KEY.fullmatch(str(key)):
            raise ConfigError(
                f"{run_uri}: a trial's pretext_key {str(key)[:80]!r} is not a cache key; the run is damaged"
            )
        try:
            target = child_path(out, f"{task}_seed{seed}.npz")
        except UnsafeFileError as exc:
            raise ConfigError(f"{run_uri}: a trial's task and seed make {exc}") from None
        src = store.join(cache, str(key), "examples.npz")
        if store.exists(src):
            out.mkdir(exist_ok=True)
            data = _read_cached(src)
            write_replacing(target, lambda w, data=data: w.write(data))


def _read_cached(src: str) -> bytes:
    """A pretext cache file's bytes: a local one as a bounded regular file (never a FIFO or a link)."""
    if store.is_uri(src):
        fs, path = store.filesystem(src)
        with fs.open_input_stream(path) as f:
            return f.read()
    try:
        return read_regular(src)
    except UnsafeFileError as exc:
        raise ConfigError(f"{exc}; remove it from the run's pretext cache") from None
