"""Runs written before the packages-by-stage layout: their tuner.pkl names the study's callbacks by the old
module paths (`study.console`, `study.tune_state`), and `study resume` must still restore them."""

from __future__ import annotations

import pickle
import shutil
import sys

import pandas as pd
import pytest
from conftest import run_cli
from ray import cloudpickle

from study.run import console, integrity, tune_state
from study.run.tune_state import MOVED_MODULES, moved_modules

pytestmark = pytest.mark.slow  # both use the session's smoke run


def _as_written_before_the_move(tuner_pkl) -> bytes:
    """The run's tuner.pkl re-pickled as the old layout wrote it: the callback classes under their old module
    names (found there through `moved_modules` while pickling)."""
    old_names = {new: old for old, new in MOVED_MODULES.items()}
    classes = (console.StudyProgress, tune_state.RunGuard)
    with moved_modules():
        state = pickle.loads(tuner_pkl.read_bytes())
        try:
            for cls in classes:
                cls.__module__ = old_names[cls.__module__]
            return cloudpickle.dumps(state)
        finally:
            for cls in classes:
                cls.__module__ = MOVED_MODULES[cls.__module__]


def test_a_pickle_naming_the_old_modules_loads_only_through_the_moved_names(tmp_path, smoke_run):
    legacy = _as_written_before_the_move(smoke_run / "tuner.pkl")
    assert b"study.console" in legacy and b"study.run.console" not in legacy
    with pytest.raises(ModuleNotFoundError, match=r"study\.(console|tune_state)"):
        pickle.loads(legacy)
    with moved_modules():
        assert pickle.loads(legacy)
    assert "study.console" not in sys.modules  # nothing left behind


def test_resume_restores_a_run_written_before_the_move(tmp_path, smoke_run, study_env):
    run = tmp_path / "smoke"
    shutil.copytree(smoke_run, run)
    (run / "tuner.pkl").write_bytes(_as_written_before_the_move(run / "tuner.pkl"))
    integrity.sign_dir(run, integrity.load_key())  # as the old driver signed it
    before = pd.read_csv(run / "results.csv")

    proc = run_cli("resume", str(run), env=study_env)

    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    after = pd.read_csv(run / "results.csv")
    pd.testing.assert_frame_equal(before, after)
