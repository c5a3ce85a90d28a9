"""`study.spec.backend`: the Keras backend named as Keras resolves it, without importing Keras."""

from __future__ import annotations

import json
import subprocess
import sys

from study.spec import backend


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
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
