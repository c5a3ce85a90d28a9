"""The training path on JAX (`KERAS_BACKEND=jax`) beside the default TensorFlow. A process has one Keras
backend, so each check runs in a fresh interpreter: the training modules without TensorFlow or Ray (the GPU
machines have neither), the phase, determinism and model-cache tests of tests/train/, and the smoke study
through Ray Tune to its report. Skipped where JAX is not installed (the test extra installs its CPU wheel)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

from conftest import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# What a GPU machine lacks, made unimportable in the child (Keras then sees no TensorFlow either).
ABSENT = ("tensorflow", "ray", "imagehash", "optuna", "statsmodels", "baycomp", "tensorboardX", "pyarrow")

_BLOCK = f"""
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is not installed here")
sys.meta_path.insert(0, _Absent())
"""

_PHASES = (
    f"ABSENT = {ABSENT!r}\n"
    + """
import json, sys
import numpy as np
from study.data import DecodedData, Split
from study.spec.config import TrialConfig
from study.train import backend
from study.train import phases as training

rng = np.random.default_rng(0)
def split(n, name):
    return Split(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=np.arange(n, dtype=np.int64) % 2, paths=[name + str(i) for i in range(n)])
data = DecodedData(train=split(20, "train"), test=split(8, "test"), fingerprint="fp", root="<memory>",
                   image_size=32, notes=[])
trial = TrialConfig(encoder="small", encoder_widths=(4, 8, 8, 16), image_size=32, seed=0, threads=1,
                    task="rotation", pretext_epochs=1, finetune_epochs=1, batch_size=8, pretext_batch_size=8)
pre = training.run_pretext(trial, data)
fine = training.run_finetune(trial, data, encoder_weights=pre.encoder_weights)
absent = [m for m in ABSENT if m in sys.modules]
print(json.dumps({"backend": backend.version(), "absent_imported": absent, "device": pre.cost["device"],
                  "loss": fine.history[0]["loss"]}))
"""
)


def _run_on(args: list[str], timeout: float, backend: str = "jax") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_the_training_path_runs_on_jax_without_tensorflow_or_ray():
    proc = _run_on(["-c", _BLOCK + _PHASES], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"].startswith("jax ") and out["absent_imported"] == [] and out["device"] == "CPU"
    assert out["loss"] == out["loss"]  # finite enough to compare: not NaN


# The phase and determinism tests (same seed: same split, corruptions, initial weights, bitwise results), a
# subset of the two files so the suite stays within its time (all of them, with test_model_cache.py, pass on
# JAX too: `KERAS_BACKEND=jax python -m pytest tests/train`, ~4 min).
JAX_SELECTION = (
    "finetune_history or bitwise or other_seed or pretext_phase_per_task or pretext_is_deterministic "
    "or replayed_regimes or simclr_is_bitwise or byol_is_bitwise or nt_xent or byol_loss"
)


@pytest.mark.slow
def test_the_phase_and_determinism_tests_pass_on_jax():
    files = ["tests/train/test_training.py", "tests/train/test_contrastive.py"]
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", JAX_SELECTION, *files]
    proc = _run_on(args, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert " passed" in proc.stdout.strip().splitlines()[-1]


# PyTorch, where it is installed (CI has not: its CPU wheel is ~190 MB): a learning rate that explodes is a
# divergence, as on TensorFlow and JAX (PyTorch's own binary cross-entropy raised on the NaN probabilities), and
# one-thread training runs (PyTorch 2.13's oneDNN convolution corrupted the heap: `backend._configure_torch`).
TORCH_SELECTION = "absurd_learning_rate or pretext_divergence or divergence_stops or finetune_history"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed here")
def test_an_exploding_learning_rate_is_a_divergence_on_pytorch():
    files = ["tests/train/test_training.py", "tests/train/test_contrastive.py"]
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", TORCH_SELECTION, *files]
    proc = _run_on(args, timeout=900, backend="torch")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert " passed" in proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_smoke_study_runs_on_jax_to_a_report(tmp_path, study_env):
    """The smoke study with `backend = "jax"` in its study file and no KERAS_BACKEND where `study` runs (empty
    is unset, for Keras too): its trials run on JAX (their pretext-cache entries are keyed by JAX's version,
    which each trial takes from its own process), the manifest says so, and a resume under another
    KERAS_BACKEND is refused in one line before anything starts."""
    from study.spec.backend import backend_version
    from study.spec.presets import get_preset
    from study.trainables import pretext_key

    storage, config = tmp_path / "runs", tmp_path / "jax.toml"
    config.write_text('preset = "smoke"\nbackend = "jax"\n')
    env = {**study_env, "KERAS_BACKEND": ""}
    proc = run_cli(
        "run", "--config", str(config), "--storage", str(storage), "--name", "jax", env=env, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = storage / "jax"
    manifest = json.loads((run / "manifest.json").read_text())
    assert (
        manifest["versions"]["keras_backend"] == backend_version("jax")
        and manifest["config"]["backend"] == "jax"
    )
    assert (run / "report.html").exists() and (run / "report.md").exists()
    pretexts = [t for t in get_preset("smoke").trial_configs() if t.task != "none"]
    entries = {d.name for d in (run / "pretext_cache").iterdir() if d.is_dir()}
    for name in ("jax", "tensorflow"):
        keys = {pretext_key(t, manifest["data_fingerprint"], backend_version(name)) for t in pretexts}
        assert (keys <= entries) == (name == "jax"), (name, entries)
    proc = run_cli("resume", str(run), env={**study_env, "KERAS_BACKEND": "tensorflow"}, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-3000:]
    assert "study.json: backend = 'jax', but KERAS_BACKEND=tensorflow" in err[0]
