"""A run directory is data, never code (issue #27, "default deny"): whatever file of a run Tune or the study
would read back as code or settings must carry this user's signature, whatever its name; values read from a
run are bounded and validated and never build a path outside it; only regular files are opened; an edited
results.csv is reported as such; report.md shows run data as text."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
from crafted import crafted
from fixtures_results import make_results, write_run_dir

from study import cli
from study.io.files import UnsafeFileError
from study.report.document import Box, Para, Pre, Table, render_markdown
from study.run import integrity, runner
from study.run.tune_state import STATE_BACKUP, repair_state
from study.spec.config import ConfigError


@pytest.fixture
def run_copy(smoke_run, tmp_path) -> pathlib.Path:
    """A copy of the session's smoke run (this user's own, signed run) to damage."""
    copy = tmp_path / "copied-run"
    shutil.copytree(smoke_run, copy, symlinks=True)
    return copy


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: every refusal happens before it."""

    def refuse(*a, **kw):
        raise AssertionError("Ray was started: the run directory was not refused")

    monkeypatch.setattr(runner, "init_ray", refuse)


def _one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("study:")]
    assert code == cli.EXIT_BAD_CONFIG and len(lines) == 1 and lines[0].startswith("study: error: "), err
    return lines[0]


def _resume_error(run: pathlib.Path, capsys, *flags: str) -> str:
    return _one_error_line(capsys, cli.main(["resume", str(run), *flags]))


# ------------------------------------------------------------------------------ 1. no planted code runs
@pytest.mark.parametrize(
    "name",
    [
        "search_gen_state-2099-01-01_00-00-00.json",  # the search algorithm's state: the probe's case
        "searcher-state-2099-01-01_00-00-00.pkl",
        "any-future-tune-state.json",  # a name no list of Tune's files holds: refused all the same
    ],
)
def test_a_planted_state_file_of_any_name_is_refused_by_name(run_copy, tmp_path, capsys, no_ray, name):
    """The signed set was a hand-kept list of Tune's file names (without `search_gen_state-*`); it is now every
    file at the top of the run, so an unsigned one is refused before anything is unpickled."""
    marker = tmp_path / "ran"
    (run_copy / name).write_bytes(crafted(marker))
    line = _resume_error(run_copy, capsys)
    assert f"{run_copy}/{name}: not written by your own study runs" in line
    assert not marker.exists()


def test_signing_covers_every_file_tune_staged_whatever_its_name(tmp_path):
    """RunGuard signs Tune's staging folder by what is there, not by a list of names: search state, trial
    pickles, and files Tune may add in a later version; dot-files and the driver's data outputs need none."""
    staging = tmp_path / "staging"
    (staging / "trial_a").mkdir(parents=True)
    for name in ("experiment_state-x.json", "search_gen_state-x.json", "something-new.bin"):
        (staging / name).write_bytes(pickle.dumps({"state": name}))
    (staging / "trial_a" / "error.pkl").write_bytes(pickle.dumps(ValueError("boom")))
    (staging / "trial_a" / "params.pkl").write_bytes(pickle.dumps({"seed": 0}))
    (staging / "trial_a" / "result.json").write_text("{}")
    (staging / "results.csv").write_text("data")
    (staging / ".validate_storage_marker").write_text("")
    key = integrity.load_key()
    integrity.sign_dir(staging, key)
    assert integrity.unsigned_files(staging, key) == []
    assert sorted(integrity.read_signatures(staging / integrity.SIGNATURES)) == [
        "experiment_state-x.json",
        "search_gen_state-x.json",
        "something-new.bin",
        "trial_a/error.pkl",
        "trial_a/params.pkl",
    ]
    (staging / "trial_a" / "params.pkl").write_bytes(b"replaced")
    assert integrity.unsigned_files(staging, key) == ["trial_a/params.pkl"]


@pytest.mark.slow
def test_a_real_search_run_signs_its_search_state_and_refuses_a_planted_one(tmp_path, monkeypatch, capsys):
    """`study search` writes `search_gen_state-*.json` (a cloudpickle Tune restores): a real run signs it, and a
    newer unsigned one planted beside it (Tune restores the newest) stops `study resume`."""
    ray = pytest.importorskip("ray")
    from study.spec.presets import get_preset
    from study.spec.resolve import apply_flags, finalize_study

    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    smoke, search = get_preset("smoke"), get_preset("search")
    preset = search.replace(base=smoke.base.replace(patiences=(1,)))
    study = finalize_study(apply_flags(preset, samples=2))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = runner.run_study(study, storage=tmp_path / "runs", name="search", write_report=False)
    finally:
        ray.shutdown()
    states = sorted(p.name for p in run.glob("search_gen_state-*.json"))
    assert states, sorted(p.name for p in run.iterdir())
    key = integrity.load_key()
    assert integrity.unsigned_files(run, key) == []
    assert {*states, "study.json", "tuner.pkl"} <= set(integrity.read_signatures(run / integrity.SIGNATURES))
    repair_state(run)  # the run's own files pass as they are
    marker = tmp_path / "ran"
    planted = "search_gen_state-2099-01-01_00-00-00.json"
    (run / planted).write_bytes(crafted(marker))
    monkeypatch.setattr(runner, "init_ray", lambda *a, **kw: pytest.fail("Ray started for a planted state"))
    line = _resume_error(run, capsys)
    assert f"{planted}: not written by your own study runs" in line and not marker.exists()


# ------------------------------------------------------------------------ 2. nothing written outside the run
def test_report_of_a_run_whose_params_climb_out_writes_nothing_outside(run_copy, tmp_path, capsys):
    """`study report` without results.csv builds examples/TASK_seedS.npz from each trial's params.json: a seed
    of "0/../../victim/x" wrote x.npz outside the run. The record is now validated (a seed is a whole number)."""
    (run_copy / "results.csv").unlink()
    trial = next(d for d in sorted(run_copy.glob("two_stage_trial_*")) if "task_rotation" in d.name)
    params = json.loads((trial / "params.json").read_text())
    params["seed"] = "0/../../victim/x"
    (trial / "params.json").write_text(json.dumps(params))
    line = _one_error_line(capsys, cli.main(["report", str(run_copy)]))
    assert f"{trial}/params.json: seed" in line and "damaged" in line
    assert not (tmp_path / "victim").exists() and not any(tmp_path.rglob("x.npz"))


def test_examples_are_named_inside_the_run_whatever_the_records_say(tmp_path):
    """The last line of defence: a name built from run data must be one plain name inside examples/."""
    from study.run.rundir import copy_examples
    from study.spec.presets import get_preset
    from study.spec.resolve import finalize_study

    preset = finalize_study(get_preset("smoke"))
    results = pd.DataFrame([{"task": "../../victim", "seed": 0, "pretext_key": "ab" * 12}])
    with pytest.raises(ConfigError, match="not a plain file name"):
        copy_examples(tmp_path / "run", results, preset, str(tmp_path / "run"))
    results = pd.DataFrame([{"task": "rotation", "seed": 0, "pretext_key": "../../etc"}])
    with pytest.raises(ConfigError, match="is not a cache key"):
        copy_examples(tmp_path / "run", results, preset, str(tmp_path / "run"))
    assert not (tmp_path / "victim").exists()


def test_an_edited_study_json_is_refused_before_any_folder_is_made(run_copy, tmp_path, capsys, no_ray):
    """study.json says where the study writes (cache_dir): an unsigned edit made `study resume` create folders
    elsewhere. study.json is signed now, and checked before anything is created."""
    elsewhere = tmp_path / "elsewhere" / "cache"
    saved = json.loads((run_copy / "study.json").read_text())
    saved["preset"]["base"]["cache_dir"] = str(elsewhere)
    (run_copy / "study.json").write_text(json.dumps(saved, indent=2))
    line = _resume_error(run_copy, capsys)
    assert f"{run_copy}/study.json: not written by your own study runs" in line
    assert not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------------------- 3. only regular files
@pytest.mark.parametrize("name", ["tuner.pkl", "study.json", ".signatures.json", "experiment_state-*.json"])
def test_a_fifo_in_the_run_is_refused_without_blocking(run_copy, capsys, no_ray, name):
    """`tuner.pkl` as a FIFO blocked `study resume` for good (Ctrl-C ignored): nothing of a run is opened
    before it is known to be a regular file."""
    if "*" in name:
        name = next(run_copy.glob(name)).name
        shutil.rmtree(run_copy / STATE_BACKUP)  # no signed copy to put back: the FIFO must stop the resume
    (run_copy / name).unlink()
    os.mkfifo(run_copy / name)
    codes: list[int] = []
    resume = threading.Thread(target=lambda: codes.append(cli.main(["resume", str(run_copy)])), daemon=True)
    resume.start()
    resume.join(timeout=30)
    assert not resume.is_alive(), f"study resume blocked on a FIFO at {name}"
    line = _one_error_line(capsys, codes[0])
    assert str(run_copy) in line


def test_a_symlink_out_of_the_run_is_refused(run_copy, tmp_path, capsys, no_ray):
    outside = tmp_path / "outside.pkl"
    shutil.move(run_copy / "tuner.pkl", outside)
    (run_copy / "tuner.pkl").symlink_to(outside)
    line = _resume_error(run_copy, capsys, "--trust-run-dir")  # refused even when trusted
    assert f"{run_copy}/tuner.pkl: is a symbolic link or not a regular file" in line


def _trial_dir(run: pathlib.Path) -> pathlib.Path:
    return next(p for p in sorted(run.iterdir()) if p.is_dir() and (p / "params.json").exists())


@pytest.mark.parametrize("where", ["dot-file", "trial-file", "checkpoint-fifo"])
def test_a_link_or_fifo_anywhere_in_the_run_is_refused(run_copy, tmp_path, capsys, no_ray, where):
    """The re-probe's variants: Tune writes its storage marker (a dot-file) and a trial's progress.csv through
    a symlink, and a FIFO in a checkpoint blocked the restore; every depth is checked, trusted or not."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    if where == "dot-file":
        link = run_copy / ".validate_storage_marker"
        link.unlink(missing_ok=True)
        link.symlink_to(victim)
    elif where == "trial-file":
        link = _trial_dir(run_copy) / "progress.csv"
        link.unlink(missing_ok=True)
        link.symlink_to(victim)
    else:
        folder = _trial_dir(run_copy) / "checkpoint_planted"
        folder.mkdir()
        link = folder / "trial_state.json"
        os.mkfifo(link)
    line = _resume_error(run_copy, capsys, "--trust-run-dir")
    assert f"{link}: is a symbolic link or not a regular file" in line
    assert victim.read_text() == "precious"


def test_an_edited_results_table_without_its_study_record_is_not_called_checked(
    run_copy, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    table = pd.read_csv(run_copy / "results.csv")
    table["test_auc"] = (table["test_auc"] + 0.388).clip(upper=1.0)
    table.to_csv(run_copy / "results.csv", index=False)
    (run_copy / "study.json").unlink()
    assert cli.main(["report", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert "was not checked against the trials' own records (study.json is missing)" in err


# ------------------------------------------------------------------------------------ 4. one line, no traceback
@pytest.mark.parametrize(
    "study_json, why",
    [
        ("{not json", "is not JSON"),
        ("[1, 2, 3]", "not a study record"),
        ('{"started": "2026"}', "not a study record"),  # no preset
        ("deep", "nested deeper than"),
        ("extra", "preset: not a study this version can read"),  # an extra key in the preset
        ("bounds", "preset: trial.finetune_epochs"),  # a value out of its bounds
    ],
    ids=["malformed", "list", "preset-less", "nested-200000", "extra-key", "out-of-bounds"],
)
@pytest.mark.parametrize("command", ["resume", "report"])
def test_a_broken_study_json_is_one_line(run_copy, capsys, no_ray, study_json, why, command):
    saved = json.loads((run_copy / "study.json").read_text())
    if study_json == "deep":
        study_json = "[" * 200_000 + "]" * 200_000
    elif study_json == "extra":
        saved["preset"]["surprise"] = 1
        study_json = json.dumps(saved)
    elif study_json == "bounds":
        saved["preset"]["base"]["finetune_epochs"] = 1e20
        study_json = json.dumps(saved)
    (run_copy / "study.json").write_text(study_json)
    if command == "report":
        (run_copy / "results.csv").unlink()  # rebuilt from the records, with the study as the run recorded it
    line = _one_error_line(capsys, cli.main([command, str(run_copy)]))
    assert f"{run_copy}/study.json" in line and why in line


def test_deep_signatures_are_no_signatures(run_copy, capsys, no_ray):
    """JSON nested 200,000 deep in .signatures.json raised RecursionError; now it is no valid signature file,
    so the run's files are refused as unsigned."""
    (run_copy / integrity.SIGNATURES).write_text("{" + '"a":{' * 200_000 + "}" * 200_001)
    line = _resume_error(run_copy, capsys)
    assert "not written by your own study runs" in line


@pytest.mark.parametrize("trust", [False, True])
def test_deep_experiment_state_is_one_line(run_copy, capsys, no_ray, trust):
    state = next(run_copy.glob("experiment_state-*.json"))
    shutil.rmtree(run_copy / STATE_BACKUP)
    state.write_text("[" * 200_000 + "]" * 200_000)
    line = _resume_error(run_copy, capsys, *(["--trust-run-dir"] if trust else []))
    assert state.name in line and "cut short" in line


def test_deep_experiment_state_is_put_back_from_its_signed_backup(run_copy, capsys, monkeypatch):
    class Reached(Exception):
        pass

    def reached(*a, **kw):
        raise Reached

    monkeypatch.setattr(runner, "init_ray", reached)
    state = next(run_copy.glob("experiment_state-*.json"))
    state.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(Reached):
        runner.resume_study(run_copy)
    assert f"Restored {state.name} from its backup" in capsys.readouterr().out
    assert state.read_bytes() == (run_copy / STATE_BACKUP / state.name).read_bytes()


def test_resume_of_a_poisoned_ray_state_stops_with_one_line(run_copy, study_env):
    """With --trust-run-dir, a state Tune cannot restore made Tune log a traceback and start the experiment
    afresh (every trial again, exit 0); now the resume stops before any trial, exit 2, one line."""
    from conftest import run_cli

    state = next(run_copy.glob("experiment_state-*.json"))
    saved = json.loads(state.read_text())
    saved["trial_data"] = [["not a trial", "{}"]]
    state.write_text(json.dumps(saved))
    shutil.rmtree(run_copy / STATE_BACKUP)
    before = {d.name: (d / "result.json").stat().st_mtime_ns for d in run_copy.glob("two_stage_trial_*")}
    proc = run_cli("resume", str(run_copy), "--trust-run-dir", env=study_env, timeout=300)
    assert proc.returncode == cli.EXIT_BAD_CONFIG, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("study:")]
    assert len(errors) == 1 and "Ray Tune could not restore the run's experiment state" in errors[0]
    after = {d.name: (d / "result.json").stat().st_mtime_ns for d in run_copy.glob("two_stage_trial_*")}
    assert after == before  # no trial ran again


def test_report_with_every_test_auc_nan_writes_a_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    results = make_results(n_seeds=3)
    results["test_auc"] = np.nan
    run = write_run_dir(tmp_path / "run", results)
    code = cli.main(["report", str(run)])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err, captured.err
    assert (run / "report.md").exists()


# ------------------------------------------------------------------------------ 5. an edited results.csv
def test_an_edited_results_table_is_reported_as_edited(run_copy, capsys, monkeypatch, tmp_path):
    """results.csv AUCs edited by hand (+38.8 pp) were reported as measured; `study report` now checks the
    table against the trials' own records and says so on stderr and at the top of the report."""
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    table = pd.read_csv(run_copy / "results.csv")
    rotation = table["arm"] == "rotation"
    table.loc[rotation, "test_auc"] = (table.loc[rotation, "test_auc"] + 0.388).clip(upper=1.0)
    table.to_csv(run_copy / "results.csv", index=False)
    code = cli.main(["report", str(run_copy)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("study: warning:")]
    assert len(warnings) == 1 and "differ from the trials' own records" in warnings[0], captured.err
    assert f"{int(rotation.sum())} value(s)" in warnings[0] and "test_auc" in warnings[0]
    md = (run_copy / "report.md").read_text()
    assert "Warning: the results table does not match the run's records" in md
    assert "the table was edited after the run" in md


def test_an_unedited_results_table_raises_no_warning(run_copy, capsys, monkeypatch, tmp_path):
    from study.run.results import edited_results

    assert edited_results(str(run_copy), run_copy) == []
    table = pd.read_csv(run_copy / "results.csv")
    table.iloc[:-1].to_csv(run_copy / "results.csv", index=False)  # a row removed
    (problem,) = edited_results(str(run_copy), run_copy)
    assert "1 recorded trial row(s) are missing" in problem


# ------------------------------------------------------------------------------ 6. report.md shows run data as text
def test_report_md_escapes_planted_html_as_report_html_does(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    results = make_results(n_seeds=3, status={("rotation", 1): "error"})
    results["error"] = results["error"].astype(object)
    results.loc[results["status"] == "error", "error"] = "<script>alert(1)</script> failed"
    run = write_run_dir(tmp_path / "run", results)
    assert cli.main(["report", str(run)]) == 0, capsys.readouterr().err
    md = (run / "report.md").read_text()
    assert "<script" not in md and "&lt;script>alert(1)&lt;/script> failed" in md


def test_markdown_text_of_every_block_kind_never_opens_html(tmp_path):
    planted = "<img src=x onerror=alert(1)>"
    blocks = [
        Para(planted),
        Box("warning", planted, [planted]),
        Table(pd.DataFrame({"arm": [planted]}), caption=planted),
        Pre("```\n" + planted, summary=planted),
    ]
    md = render_markdown(blocks, tmp_path)
    assert "<img" not in md.replace("````\n```\n<img", "")  # inside the longer fence it is code, not HTML
    assert md.count("&lt;img") == 6  # five texts, and the summary (already escaped as HTML)
    assert "````\n```\n<img" in md  # a fence inside the text cannot close the block's fence
    assert "p < 0.05" in render_markdown([Para("p < 0.05")], tmp_path)  # a comparison stays as written


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_checkpoint_link_or_fifo_is_never_read_and_no_temp_folder_is_left(tmp_path, monkeypatch, kind):
    """What a trial restores from: a state file linked to /dev/zero was copied until the disk filled, and a
    FIFO left one /tmp/study-restore-* folder per attempt (re-probe of #27)."""
    import tempfile

    from ray import tune

    from study import trainables

    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    state = checkpoint / trainables.STATE_FILE
    if kind == "link":
        state.symlink_to("/dev/zero")
    else:
        os.mkfifo(state)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(trainables.tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(checkpoint))
    with pytest.raises((UnsafeFileError, shutil.Error)):
        trainables._restore_checkpoint()
    assert list(scratch.iterdir()) == []


# ------------------------------------------------------------------------------ sealed checkpoints and cache
def _sealed_run_folders(run: pathlib.Path) -> list[str]:
    from study.run.tune_state import sealed_folders

    return sealed_folders(run)


def test_a_real_run_seals_every_checkpoint_and_pretext_cache_entry(smoke_run):
    """What the smoke study wrote through Tune: every checkpoint and every cache entry carries a seal that
    verifies with the run's own key (from study.json's salt), and no other run's key verifies it."""
    from study.io.seal import SEAL, seal_problems
    from study.run.tune_state import check_sealed, run_seal

    saved = json.loads((smoke_run / "study.json").read_text())
    seal = run_seal(saved)
    folders = _sealed_run_folders(smoke_run)
    assert any("/checkpoint_" in f for f in folders) and any(f.startswith("pretext_cache/") for f in folders)
    for name in folders:
        assert (smoke_run / name / SEAL).is_file(), name
        assert seal_problems(smoke_run / name, seal.key) == [], name
    check_sealed(smoke_run, seal)
    other = run_seal({**saved, "run_salt": "another-run"})
    assert seal_problems(smoke_run / folders[0], other.key)


def _checkpoint_state(run: pathlib.Path) -> pathlib.Path:
    return next(p for p in sorted(run.glob("*/checkpoint_*/trial_state.json")))


@pytest.mark.parametrize("where", ["checkpoint-value", "checkpoint-weights", "cache-entry", "cache-added"])
def test_an_edited_checkpoint_or_cache_entry_is_refused_by_name(run_copy, capsys, no_ray, where):
    """The item #27 left open: a value edited in a checkpoint (here the fine-tune epoch it resumes from) was
    restored as written. Now refused before Ray starts; --trust-run-dir accepts it."""
    from study.run.tune_state import check_sealed, run_seal

    if where == "checkpoint-value":
        target = _checkpoint_state(run_copy)
        state = json.loads(target.read_text())
        target.write_text(json.dumps({**state, "epoch": 999}))
    elif where == "checkpoint-weights":
        target = next(run_copy.glob("*/checkpoint_*/*/*.npz"))
        target.write_bytes(target.read_bytes()[:-8] + b"\x00" * 8)
    else:
        entry = next(p for p in (run_copy / "pretext_cache").iterdir() if p.is_dir())
        target = entry / ("pretext.json" if where == "cache-entry" else "planted.npz")
        target.write_text(json.dumps({"ssim": 1.0}))
    line = _resume_error(run_copy, capsys)
    assert str(target.relative_to(run_copy)) in line and "not written by this run" in line, line
    saved = json.loads((run_copy / "study.json").read_text())
    check_sealed(run_copy, run_seal(saved, trust=True))  # the flag accepts it


def test_a_run_without_a_salt_is_refused_unless_trusted(run_copy):
    from study.run.tune_state import check_sealed, run_seal

    with pytest.raises(ConfigError, match="before trials sealed") as err:
        check_sealed(run_copy, run_seal({}))
    assert "--trust-run-dir" in str(err.value)
    check_sealed(run_copy, run_seal({}, trust=True))


def test_a_trial_refuses_an_edited_checkpoint_wherever_the_run_lives(smoke_run, tmp_path, monkeypatch):
    """The trial's own check (it also guards runs on object storage, which the driver does not read through):
    `_restore_checkpoint` of an edited copy raises, naming the checkpoint, and leaves no temp folder."""
    import tempfile

    from ray import tune

    from study import trainables
    from study.run.tune_state import run_seal

    seal = run_seal(json.loads((smoke_run / "study.json").read_text()))
    checkpoint = tmp_path / "checkpoint_000001"
    shutil.copytree(_checkpoint_state(smoke_run).parent, checkpoint)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(trainables.tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(checkpoint))
    state, local = trainables._restore_checkpoint(seal)  # as written: restored
    assert state and local is not None
    shutil.rmtree(local)
    (checkpoint / trainables.STATE_FILE).write_text(json.dumps({**state, "epoch": 999}))
    with pytest.raises(UnsafeFileError, match=r"checkpoint .*trial_state.json: changed since it was sealed"):
        trainables._restore_checkpoint(seal)
    assert list(scratch.iterdir()) == []


def test_a_trial_refuses_an_edited_pretext_cache_entry(smoke_run, tmp_path, monkeypatch):
    from study import trainables
    from study.run.tune_state import run_seal
    from study.spec.presets import get_preset

    seal = run_seal(json.loads((smoke_run / "study.json").read_text()))
    root = tmp_path / "pretext_cache"
    entry = next(p for p in (smoke_run / "pretext_cache").iterdir() if p.is_dir())
    shutil.copytree(entry, root / entry.name)
    trial = get_preset("smoke").trial_configs()[1]
    monkeypatch.setattr(trainables, "pretext_key", lambda *a, **kw: entry.name)
    monkeypatch.setattr(trainables, "pretext_root", lambda *a, **kw: str(root))
    data = type("D", (), {"fingerprint": "f"})()
    loaded = trainables.cached_pretext(trial, data, train=_never, load=lambda e: "loaded", seal=seal)
    assert loaded == ("loaded", True, entry.name)
    (root / entry.name / "pretext.json").write_text("{}")
    with pytest.raises(UnsafeFileError, match="pretext-cache entry .*pretext.json: changed"):
        trainables.cached_pretext(trial, data, train=_never, load=lambda e: "loaded", seal=seal)


def _never(*a, **kw):
    raise AssertionError("trained: the cache entry was not used")
