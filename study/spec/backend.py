"""Which Keras backend a study's trials compute on, named without importing Keras or the backend (the driver
never starts one): the manifest records it, the pretext-cache key holds it (numbers differ between backends
and their versions), and a Ray cluster's workers are told it.

Keras picks its backend from `KERAS_BACKEND`, else the `backend` of `$KERAS_HOME/keras.json` (default
`~/.keras`), else TensorFlow; `keras_backend` resolves it the same way. A study may name its own (a study file's
`backend`, `StudyPreset.backend`): `study_backend` resolves and checks it before Ray starts, and the runner
hands it to every trial (`KERAS_BACKEND` in Ray's `runtime_env`). `study.train.backend` holds what is
backend-specific inside a trial.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from study.spec.config import ConfigError

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
#: The distributions whose version names each backend (the first one installed is recorded).
DISTRIBUTIONS = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "jax": ("jaxlib", "jax"),
    "torch": ("torch",),
}
#: Each backend's name for people and how to install it (`study_backend`'s refusal of one not installed).
INSTALL = {
    "tensorflow": ("TensorFlow", "pip install tensorflow-cpu (CPU) or 'tensorflow[and-cuda]' (GPU)"),
    "jax": ("JAX", "pip install jax (CPU) or 'jax[cuda12]' (GPU)"),
    "torch": ("PyTorch", "pip install torch (CPU wheel) or the CUDA wheel from pytorch.org"),
}


def keras_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend Keras would run on in a process with environment `environ` (default: this one's)."""
    env = os.environ if environ is None else environ
    if env.get("KERAS_BACKEND"):
        return env["KERAS_BACKEND"]
    home = Path(env.get("KERAS_HOME") or Path(env.get("HOME", "~")).expanduser() / ".keras")
    try:
        configured = json.loads((home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        configured = None
    return str(configured or DEFAULT)


def backend_version(name: str | None = None) -> str:
    """`"<backend> <version>"`, e.g. "jax 0.10.2", of backend `name` (default: `keras_backend()`), the
    version of its first installed distribution ("unknown" when none is)."""
    name = name or keras_backend()
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return f"{name} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{name} unknown"


def study_backend(
    declared: str | None, environ: Mapping[str, str] | None = None, where: str = "backend"
) -> str:
    """The backend a study's trials run on: `declared` (the study's `backend`; `where` names it in errors),
    else the environment's (`keras_backend(environ)`). Checked without importing it: `ConfigError` (one line,
    naming both and the fix) when `declared` differs from a `KERAS_BACKEND` set in `environ` (neither is
    guessed to win), when the name is not one of `BACKENDS`, or when its module cannot be found here."""
    env = os.environ if environ is None else environ
    told = env.get("KERAS_BACKEND")
    if declared is not None and told and told != declared:
        raise ConfigError(
            f"{where} = {declared!r}, but KERAS_BACKEND={told} in the environment; unset KERAS_BACKEND (the "
            "study's backend is then used), or make the two agree"
        )
    name = declared if declared is not None else keras_backend(env)
    if declared is not None:
        label = f"{where} = {name!r}"
    else:
        label = (
            f"KERAS_BACKEND={name}" if told else f"the Keras backend {name!r} (keras.json or Keras' default)"
        )
    if name not in BACKENDS:
        raise ConfigError(f"{label}: not a backend this study runs on; choose one of {', '.join(BACKENDS)}")
    if not _importable(name):
        person, install = INSTALL[name]
        others = "/".join(b for b in BACKENDS if b != name)
        raise ConfigError(f"{label}: {person} is not installed here; {install}, or choose {others}")
    return name


def _importable(module: str) -> bool:
    """Whether `module` (a top-level name) can be imported here, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a module without a spec
        return False
