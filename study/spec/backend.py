"""Which Keras backend a study's trials compute on, named without importing Keras or the backend (the driver
never starts one): the manifest records it, the pretext-cache key holds it (numbers differ between backends
and their versions), and a Ray cluster's workers are told it.

Keras picks its backend from `KERAS_BACKEND`, else the `backend` of `$KERAS_HOME/keras.json` (default
`~/.keras`), else TensorFlow; `keras_backend` resolves it the same way. `study.train.backend` holds what is
backend-specific inside a trial.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
#: The distributions whose version names each backend (the first one installed is recorded).
DISTRIBUTIONS = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "jax": ("jaxlib", "jax"),
    "torch": ("torch",),
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
