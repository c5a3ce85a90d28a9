"""A run directory from elsewhere runs no code (issue #16, security): Tune's pickles are checked without being
unpickled, `study resume` restores only state this user's runs signed, `study report` reads JSON only."""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import pandas as pd
import pytest
from crafted import crafted

from study import cli
from study.data.trial_source import pretext_root
from study.run import integrity, runner
from study.run.cluster import ADDRESS_PROBE_S
from study.run.tune_state import STATE_BACKUP, backup_state, check_remote_signatures, repair_state
from study.spec.config import ConfigError, TrialConfig
from study.spec.resolve import PRETEXT_CACHE


def _copy_run(smoke_run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    copy = tmp_path / "copied-run"
    shutil.copytree(smoke_run, copy)
    return copy


def _state_name(run: pathlib.Path, prefix: str) -> str:
    return next(run.glob(f"{prefix}-*.json")).name


@pytest.fixture
def other_user(tmp_path, monkeypatch):
    """Another user's key: what a run directory copied from someone else is signed with."""
    monkeypatch.setenv("STUDY_CONFIG_DIR", str(tmp_path / "other-user-config"))


def test_signing_key_is_private_and_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_CONFIG_DIR", str(tmp_path / "cfg"))
    key = integrity.load_key()
    assert integrity.load_key() == key and len(key) == 32
    assert integrity.key_file().stat().st_mode & 0o777 == 0o600


def test_whole_pickles_are_told_from_cut_ones_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    data = crafted(marker)
    assert integrity.pickle_complete(data) and not integrity.pickle_complete(data[:-1])
    assert not integrity.pickle_complete(b"") and not integrity.pickle_complete(data + b"junk")
    assert not marker.exists()


def test_state_checks_and_backups_never_unpickle(tmp_path):
    """The old integrity check called pickle.loads on the search algorithm's state: a crafted file ran."""
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "ran"
    (run / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (run / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(crafted(marker))
    integrity.sign_dir(run, integrity.load_key())
    backup_state(run)
    repair_state(run)
    assert (run / STATE_BACKUP / "basic-variant-state-2026-01-01_00-00-00.json").exists()
    assert not marker.exists()


def test_the_smoke_run_signed_every_file_tune_unpickles(smoke_run):
    """RunGuard signs what Tune writes, as it writes it: a real run verifies against the session's key."""
    names = integrity.protected_files(smoke_run)
    assert "tuner.pkl" in names and any(n.startswith("experiment_state-") for n in names)
    assert any(n.startswith("basic-variant-state-") for n in names)
    assert integrity.unsigned_files(smoke_run, integrity.load_key()) == []
    assert integrity.unsigned_files(smoke_run / STATE_BACKUP, integrity.load_key()) == []
    check_remote_signatures(str(smoke_run), trust=False)  # the object-storage check, on the same files


def test_resume_refuses_a_run_another_user_signed_in_one_line(
    smoke_run, tmp_path, other_user, capsys, monkeypatch
):
    copy = _copy_run(smoke_run, tmp_path)
    marker = tmp_path / "ran"
    (copy / "tuner.pkl").write_bytes(crafted(marker))

    def no_ray(*a, **kw):
        raise AssertionError("Ray was started for an untrusted run")

    monkeypatch.setattr(runner, "init_ray", no_ray)
    code = cli.main(["resume", str(copy)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_BAD_CONFIG and len(err) == 1, err
    assert "not written by your own study runs" in err[0] and f"study resume {copy} --trust-run-dir" in err[0]
    assert not marker.exists()


def test_trust_run_dir_accepts_a_whole_unsigned_run(smoke_run, tmp_path, other_user, monkeypatch):
    copy = _copy_run(smoke_run, tmp_path)

    class Reached(Exception):
        pass

    def reached(*a, **kw):
        raise Reached

    monkeypatch.setattr(runner, "init_ray", reached)
    with pytest.raises(Reached):  # past every check, about to restore
        runner.resume_study(copy, trust=True)


def test_a_replaced_state_file_is_put_back_from_the_signed_backup(smoke_run, tmp_path, capsys):
    copy = _copy_run(smoke_run, tmp_path)
    name = _state_name(copy, "experiment_state")
    saved = (copy / STATE_BACKUP / name).read_bytes()
    (copy / name).write_text(json.dumps({"trial_data": [], "runner_data": {}, "stats": {}}))
    repair_state(copy)
    assert (copy / name).read_bytes() == saved
    assert "not the version this run last signed" in capsys.readouterr().out


def test_an_unsigned_trial_error_pickle_is_refused(smoke_run, tmp_path):
    copy = _copy_run(smoke_run, tmp_path)
    trial = next(p for p in copy.iterdir() if p.name.startswith("two_stage_trial_"))
    (trial / "error.pkl").write_bytes(crafted(tmp_path / "ran"))
    with pytest.raises(ConfigError, match=r"error\.pkl: not written by your own study runs"):
        repair_state(copy)
    with pytest.raises(ConfigError, match=r"error\.pkl: not written by your own study runs"):
        check_remote_signatures(str(copy), trust=False)


def test_report_reads_only_json_and_equals_the_original_tables(smoke_run, tmp_path, study_env):
    """`study report` on a run without results.csv: Tune's pickles are never loaded (the old path went through
    Tuner.restore), and the rebuilt tables equal the driver's own, every column, exactly."""
    from conftest import run_cli

    copy = _copy_run(smoke_run, tmp_path)
    for name in ("results.csv", "history.csv", "manifest.json", "report.html", "report.md"):
        (copy / name).unlink()
    marker = tmp_path / "ran"
    for name in ("tuner.pkl", _state_name(copy, "basic-variant-state")):
        (copy / name).write_bytes(crafted(marker))
    (copy / _state_name(copy, "experiment_state")).write_text("{not json")
    # Links planted where the rebuild writes: replaced, never written through.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.csv").write_text("keep")
    (copy / "history.csv").symlink_to(outside / "keep.csv")
    shutil.rmtree(copy / "examples")
    (copy / "examples").symlink_to(outside)
    proc = run_cli("report", str(copy), env=study_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
    assert [p.name for p in outside.iterdir()] == ["keep.csv"] and (
        outside / "keep.csv"
    ).read_text() == "keep"
    assert not (copy / "history.csv").is_symlink() and not (copy / "examples").is_symlink()
    assert sorted(p.name for p in (copy / "examples").iterdir()) == sorted(
        p.name for p in (smoke_run / "examples").iterdir()
    )
    for table in ("results.csv", "history.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(copy / table), pd.read_csv(smoke_run / table), check_exact=True, obj=table
        )
    assert (copy / "report.html").exists()


def test_the_pretext_cache_is_relative_to_the_run_so_a_moved_run_keeps_it(smoke_run):
    saved = json.loads((smoke_run / "study.json").read_text())
    assert saved["preset"]["base"]["pretext_cache_dir"] == PRETEXT_CACHE
    trial = TrialConfig(pretext_cache_dir=PRETEXT_CACHE)
    assert pretext_root(trial, "/new/place/run") == "/new/place/run/pretext_cache"
    assert pretext_root(trial, lambda: "s3://b/runs/r") == "s3://b/runs/r/pretext_cache"
    absolute = TrialConfig(pretext_cache_dir="/shared/cache")
    assert pretext_root(absolute, "/new/place/run") == "/shared/cache"
    for params in smoke_run.glob("two_stage_trial_*/params.json"):
        assert json.loads(params.read_text())["pretext_cache_dir"] == PRETEXT_CACHE


# ----------------------------------------------------------------------------------- addresses and caches
def test_an_address_where_nothing_listens_fails_within_seconds(cli_error):
    start = time.monotonic()
    line = cli_error(["--preset", "smoke", "--address", "127.0.0.1:1"])
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in line
    assert time.monotonic() - start < ADDRESS_PROBE_S + 5


def test_a_malformed_address_is_refused(cli_error):
    assert "expected HOST:PORT" in cli_error(["--preset", "smoke", "--address", "headnode"])


def test_address_auto_with_no_cluster_is_one_line(monkeypatch, tmp_path):
    """No `ray start` record in Ray's temp folder and no RAY_ADDRESS: one line at once, never Ray's own `auto`
    (which joins any Ray process it finds on the machine). tests/run/test_network_hostile.py has the rest."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: pytest.fail("ray.init was called"))
    from study.spec.presets import get_preset

    with pytest.raises(
        ConfigError, match=r"--address auto: no Ray cluster was started on this machine.*ray start"
    ):
        runner.init_ray("auto", get_preset("smoke"))


def test_a_cache_folder_that_cannot_be_written_is_one_line(cli_error, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("STUDY_CACHE_DIR", str(blocker / "cache"))  # even root cannot create a folder here
    line = cli_error(["--preset", "smoke"])
    assert f"STUDY_CACHE_DIR ({blocker / 'cache'}): cannot write there" in line


def test_the_embedded_ray_starts_no_dashboard_and_keeps_token_auth(monkeypatch):
    """What Ray lets us close on the embedded default: no dashboard (its job API runs code), a new local
    instance (never someone's `ray start` cluster), and token authentication left on (README, "What listens")."""
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    from study.spec.presets import get_preset

    runner.init_ray(None, get_preset("smoke"))
    assert seen["address"] == "local" and seen["include_dashboard"] is False
    import os

    assert os.environ.get("RAY_AUTH_MODE", "token") != "disabled"
