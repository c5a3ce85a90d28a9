"""Ray Tune's experiment state cut short by a killed driver: restored from the backup, or a one-line error."""

from __future__ import annotations

import json
import pickle

import pytest

from study.run import integrity
from study.run.tune_state import STATE_BACKUP, backup_state, repair_state
from study.spec.config import ConfigError


def _plant_state(run_dir, n_trials: int) -> None:
    """State files as this user's own run writes them: signed (what RunGuard does as Tune saves)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trials": n_trials}))
    (run_dir / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(pickle.dumps({"n": n_trials}))
    integrity.sign_dir(run_dir, integrity.load_key())


def test_a_cut_state_file_is_restored_from_the_last_intact_backup(tmp_path, capsys):
    run = tmp_path / "run"
    _plant_state(run, 3)
    backup_state(run)
    state = run / "experiment_state-2026-01-01_00-00-00.json"
    state.write_bytes(b'{"tri')  # the driver died while Tune rewrote it
    backup_state(run)  # a cut file never replaces the good backup
    repair_state(run)
    assert json.loads(state.read_text()) == {"trials": 3}
    assert "from its backup" in capsys.readouterr().out


def test_a_cut_state_file_without_backup_stops_with_one_line(tmp_path):
    run = tmp_path / "run"
    _plant_state(run, 3)
    (run / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(b"")
    with pytest.raises(ConfigError, match="cut short.*no intact backup.*study run"):
        repair_state(run)
    assert not (run / STATE_BACKUP).exists()


def test_intact_state_is_left_alone(tmp_path):
    run = tmp_path / "run"
    _plant_state(run, 2)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    repair_state(run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_fit_that_returns_fewer_trials_than_planned_writes_no_results(tmp_path):
    """A damaged experiment state makes Tune run another (smaller) experiment: never report it as the study."""
    from study.run.results import finish_run
    from study.spec.presets import get_preset

    with pytest.raises(ConfigError, match="returned 0 trials but the study has 8"):
        finish_run(tmp_path, [], get_preset("smoke"), write_report=False)
    assert not (tmp_path / "results.csv").exists()
