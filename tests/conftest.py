"""Shared data fixtures: a tiny synthetic dataset written once per test session."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from study.data.synth import write_dataset

# The key that signs run directories (study.run.integrity) is per user: tests use their own, never ~/.config's.
# Set at import so that every CLI subprocess and in-process run of the session shares it.
os.environ["STUDY_CONFIG_DIR"] = tempfile.mkdtemp(prefix="study-config-")
# The trainable's test hook (study.trainables.TEST_HOOK): tests/support/faults.py, off unless a test sets its
# STUDY_INJECT_FAULT / STUDY_TEST_EPOCH_DELAY / STUDY_TEST_PAUSE. Set at import so that Ray workers and CLI
# subprocesses inherit it and find the module on PYTHONPATH.
SUPPORT = Path(__file__).parent / "support"
os.environ["STUDY_TEST_HOOK"] = "faults"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(SUPPORT))  # and trials run in this process (tests/report/test_reporting.py)

# Small on purpose: 60 JPEGs of 32 px take well under a second to write and to decode.
TINY = {"n_train": 40, "n_test": 20, "size": 32, "seed": 7}


@pytest.fixture(scope="session")
def _tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, int]]]:
    root = tmp_path_factory.mktemp("tiny") / "data"
    counts = write_dataset(root, **TINY)
    return root, counts


@pytest.fixture(scope="session")
def tiny_dataset(_tiny) -> Path:
    """Read-only synthetic dataset ROOT/{train,test}/{benign,malignant}/*.jpg (40 train, 20 test, 32 px).

    Do not modify it; use `tiny_dataset_copy` to plant files."""
    return _tiny[0]


@pytest.fixture(scope="session")
def tiny_counts(_tiny) -> dict[str, dict[str, int]]:
    """Images per split and class in `tiny_dataset`: {"train": {"benign": n, "malignant": n}, "test": ...}."""
    return _tiny[1]


@pytest.fixture
def tiny_dataset_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private, writable copy of `tiny_dataset` for one test."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset, dst)
    return dst


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """An empty per-test cache folder (keeps tests away from ~/.cache)."""
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def private_simulation_cache(tmp_path_factory: pytest.TempPathFactory):
    """Simulation results are cached on disk (study.report.simulate.disk_cache_dir): keep a module's tests away
    from ~/.cache (use with `pytestmark = pytest.mark.usefixtures("private_simulation_cache")`)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDY_CACHE_DIR", str(tmp_path_factory.mktemp("sim-cache")))
    yield
    mp.undo()


# --------------------------------------------------------------------------------- end-to-end study runs
def run_cli(*args: str, env: dict[str, str], timeout: float = 900, **kw):
    """Run the installed `study` command in a subprocess (a fresh driver, as a user would)."""
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("study")
    return subprocess.run(
        [str(exe), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, **kw
    )


@pytest.fixture(scope="session")
def study_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for end-to-end runs: a private cache so tests never touch ~/.cache."""
    return {"STUDY_CACHE_DIR": str(tmp_path_factory.mktemp("study-cache"))}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, study_env: dict[str, str]) -> Path:
    """The smoke study run once per session through the CLI, uninterrupted: the reference run directory."""
    storage = tmp_path_factory.mktemp("runs")
    proc = run_cli("run", "--preset", "smoke", "--storage", str(storage), "--name", "smoke", env=study_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # What a person saw (not a TTY here, as in CI): tests/test_study_e2e.py checks the console on it.
    (storage / "smoke.console.txt").write_text(proc.stdout + proc.stderr)
    return storage / "smoke"


@pytest.fixture
def cli_error(tmp_path, capsys, monkeypatch):
    """`cli_error(args)`: run `study run ARGS` in-process and return its one-line error, asserting exit code 2,
    no traceback, and that neither Ray nor a run directory was started."""
    from study import cli
    from study.run import runner

    def no_ray(*a, **kw):
        raise AssertionError("Ray was started: the bad input was not rejected before the study ran")

    monkeypatch.setattr(runner, "init_ray", no_ray)

    def run(args: list[str]) -> str:
        storage = tmp_path / "cli-error-runs"
        name = [] if "--name" in args else ["--name", "bad"]
        code = cli.main(["run", *args, "--storage", str(storage), *name])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == cli.EXIT_BAD_CONFIG, err
        assert len(err) == 1 and err[0].startswith("study: error: ") and "Traceback" not in err[0], err
        assert not (storage / "bad").exists()
        return err[0]

    return run
