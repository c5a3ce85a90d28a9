"""Where a trial's images come from: its data source and the cache folder (driver and trials alike).

A trial reads `data_path` (a dataset folder or a labels CSV, with `data_images` / `data_malignant` for the
CSV), or, when `data_path` is None, synthetic lesions generated once into the cache folder. The driver checks
and decodes the same source the trials then load, so both go through these two functions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.data import synth
from study.data.cache import default_cache_dir
from study.data.source import DataSource
from study.io import storage as store
from study.spec.config import ConfigError, TrialConfig


def cache_dir(trial: TrialConfig) -> Path:
    """`trial.cache_dir`, else $STUDY_CACHE_DIR, else ~/.cache/melanoma-ssl-study."""
    return Path(trial.cache_dir) if trial.cache_dir else default_cache_dir()


def data_source(trial: TrialConfig) -> Any:
    """What `study.data.cache.load_dataset` reads for `trial`: a `DataSource` (a folder or a labels CSV), or
    the folder of synthetic lesions.

    Synthetic lesions (no `data_path`) are generated on first use into `cache_dir(trial)/synthetic/...`.
    """
    if trial.data_path is None:
        return Path(
            synth.synthetic_dataset(
                cache_dir(trial), trial.synth_n_train, trial.synth_n_test, trial.image_size, trial.synth_seed
            )
        )
    return DataSource(trial.data_path, trial.data_images, tuple(trial.data_malignant))


def source_label(source: Any) -> str:
    """The path a user recognises for a source (the folder, or the CSV file)."""
    return str(getattr(source, "path", source))


def check_command(source: Any) -> str:
    """The `study data check ...` command that checks `source` as the study reads it."""
    parts = ["study data check", source_label(source)]
    if getattr(source, "images", None):
        parts += ["--images", source.images]
    if getattr(source, "malignant", ()):
        parts += ["--malignant", *source.malignant]
    return " ".join(parts)


def pretext_root(trial: TrialConfig, run_uri: str | Callable[[], str]) -> str:
    """Where `trial`'s pretext cache lives: `pretext_cache_dir`, read relative to the run `run_uri` (a
    location, or a function giving it) when relative, as the runner sets it so that a moved run directory
    keeps its cache with it; the user's cache folder when unset."""
    root = trial.pretext_cache_dir
    if root is None:
        return str(cache_dir(trial) / "pretext")
    if store.is_uri(root) or Path(root).is_absolute():
        return root
    return store.join(run_uri if isinstance(run_uri, str) else run_uri(), root)


def check_cache_writable(trial: TrialConfig) -> None:
    """Fail before any trial when the cache folder (decoded images, synthetic data, ImageNet weights) cannot
    be written, naming where its location came from."""
    folder = cache_dir(trial)
    origin = (
        "cache_dir"
        if trial.cache_dir
        else ("STUDY_CACHE_DIR" if os.environ.get("STUDY_CACHE_DIR") else "the default cache folder")
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{origin} ({folder}): cannot write there ({exc.strerror or exc}); set STUDY_CACHE_DIR (or "
            "`cache_dir` in the study file) to a writable folder"
        ) from None
