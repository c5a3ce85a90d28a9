"""`study.spec.backend`: the Keras backend named as Keras resolves it, without importing Keras, and a study's
own `backend` (a study file's key): parsed, checked before Ray starts, and weighed against `KERAS_BACKEND`."""

from __future__ import annotations

import importlib.abc
import json
import re
import subprocess
import sys

import pytest

from study.spec import backend, studyfile
from study.spec.config import ConfigError
from study.spec.presets import get_preset
from study.spec.resolve import finalize_study, resolve_study


def test_the_backend_is_resolved_as_keras_resolves_it(tmp_path):
    home = tmp_path / "keras"
    assert backend.keras_backend({"KERAS_BACKEND": "jax", "KERAS_HOME": str(home)}) == "jax"
    assert backend.keras_backend({"KERAS_HOME": str(home)}) == "tensorflow"  # no keras.json: the default
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "torch", "floatx": "float32"}))
    assert backend.keras_backend({"KERAS_HOME": str(home)}) == "torch"
    assert backend.keras_backend({"KERAS_HOME": str(home), "KERAS_BACKEND": "tensorflow"}) == "tensorflow"
    (home / "keras.json").write_text("{not json")
    assert backend.keras_backend({"KERAS_HOME": str(home)}) == "tensorflow"


def test_the_version_names_the_backend_and_its_installed_distribution():
    name, version = backend.backend_version("tensorflow").split(" ")
    assert name == "tensorflow" and version[0].isdigit()
    assert backend.backend_version("nothing-installed") == "nothing-installed unknown"


def test_naming_the_backend_imports_neither_keras_nor_a_backend():
    code = (
        "import sys; from study.spec import backend; backend.backend_version(); "
        "backend.study_backend('jax', {}); backend.study_backend(None, {}); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _NotInstalled(importlib.abc.MetaPathFinder):
    """Makes `names` unimportable, as where their wheels are not installed."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is not installed here")
        return None


def _study_file(tmp_path, text: str, name: str = "study.toml"):
    path = tmp_path / name
    path.write_text(text if "preset = " in text else 'preset = "smoke"\n' + text)
    return path


def test_a_study_file_names_its_backend_and_keeps_it_through_its_toml(tmp_path):
    study = studyfile.resolve(config=_study_file(tmp_path, 'backend = "jax"\n'))
    assert study.backend == "jax"
    again = studyfile.resolve(config=_study_file(tmp_path, studyfile.to_toml(study, "smoke"), "again.toml"))
    assert again.backend == "jax" and 'backend = "jax"' in studyfile.to_toml(study)
    assert studyfile.resolve(config=_study_file(tmp_path, "")).backend is None  # unset: the environment's
    assert studyfile.resolve("smoke", sets=["backend=torch"]).backend == "torch"
    with pytest.raises(ConfigError, match=r"study.toml:2: backend: expected a quoted string, got 3"):
        studyfile.resolve(config=_study_file(tmp_path, "backend = 3\n"))


def test_the_studys_backend_is_the_one_it_runs_on_and_the_environment_fills_in_an_unset_one(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert finalize_study(get_preset("smoke").replace(backend="jax")).backend == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert finalize_study(get_preset("smoke")).backend == "jax"  # unset in the study: KERAS_BACKEND's
    assert finalize_study(get_preset("smoke").replace(backend="jax")).backend == "jax"  # the two agree
    monkeypatch.setenv("KERAS_BACKEND", "")  # empty is unset, for Keras too
    assert backend.study_backend("jax") == "jax"


def test_a_backend_that_differs_from_keras_backend_is_refused_naming_both(tmp_path, monkeypatch, cli_error):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    line = cli_error(["--config", str(_study_file(tmp_path, 'backend = "jax"\n'))])  # one line, no Ray
    assert "backend = 'jax'" in line and "KERAS_BACKEND=tensorflow" in line and "unset KERAS_BACKEND" in line


@pytest.mark.parametrize(
    "declared, environ, message",
    [
        (
            "pytorch",
            {},
            r"^backend = 'pytorch': not a backend this study runs on; choose one of tensorflow, jax",
        ),
        (None, {"KERAS_BACKEND": "numpy"}, r"^KERAS_BACKEND=numpy: not a backend this study runs on"),
    ],
)
def test_an_unknown_backend_is_refused_in_one_line(declared, environ, message):
    with pytest.raises(ConfigError, match=message):
        backend.study_backend(declared, environ)


def test_a_backend_not_installed_here_is_refused_with_its_install_line(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled("torch"), *sys.meta_path])
    message = re.escape("backend = 'torch': PyTorch is not installed here; pip install torch (CPU wheel)")
    with pytest.raises(ConfigError, match=message + r".*or choose tensorflow/jax$"):
        resolve_study(config=_study_file(tmp_path, 'backend = "torch"\n'))
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled("jax"), *sys.meta_path[1:]])
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    with pytest.raises(ConfigError, match=r"^KERAS_BACKEND=jax: JAX is not installed here; pip install jax"):
        backend.study_backend(None, {"KERAS_BACKEND": "jax"})
