"""Adversarial command lines (issue #16, first part): each ends at once with one line naming the flag and the
fix, exit code 2, no traceback, no Ray, and nothing written outside --storage."""

from __future__ import annotations

import time

import pytest

from study import cli


@pytest.mark.parametrize(
    "name", ["../../escaped", "/tmp/absolute-run", "a/b", "", ".hidden", "x" * 101, "a b"]
)
def test_run_names_that_leave_storage_nest_or_are_empty_are_refused(name, cli_error, tmp_path):
    line = cli_error(["--preset", "smoke", "--name", name])
    assert line.startswith("study: error: --name:") and "one folder inside --storage" in line
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "cli-error-runs" / "a").exists()


def test_a_uri_without_a_bucket_is_refused_before_anything_is_written(cli_error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("s3://", "s3:///"):
        code = cli.main(["run", "--preset", "smoke", "--storage", uri, "--name", "x"])
        assert code == cli.EXIT_BAD_CONFIG
    assert list(tmp_path.iterdir()) == []  # no ./s3:/... folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cpus-per-trial", "nan"], "--cpus-per-trial: give a whole number"),
        (["--cpus-per-trial", "inf"], "--cpus-per-trial: give a whole number"),
        (["--cpus-per-trial", "0.5"], "--cpus-per-trial: give a whole number"),
        (["--cpus-per-trial", "64"], "this machine has"),
        (["--gpus-per-trial", "nan"], "--gpus-per-trial"),
        (["--set", "cpus_per_trial=0.5"], "cpus_per_trial: give a whole number"),
    ],
)
def test_resource_requests_no_trial_could_get_are_refused(args, message, cli_error):
    assert message in cli_error(["--preset", "smoke", *args])


def test_a_grid_too_large_to_run_is_refused_within_seconds(cli_error):
    t0 = time.perf_counter()
    line = cli_error(["--preset", "smoke", "--seeds", "100000"])
    assert "400000 trials, over the limit" in line and "--seeds 10" in line
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--size", "7"], "--size must be an integer >= "),
        (None, ["--n-train", "0"], "--n-train must be an integer >= 2"),
        (None, ["--malignant-fraction", "0.01"], "--malignant-fraction=0.01 gives"),
        ("file", [], "exists and is not a directory"),
        ("folder", [], "pass --overwrite to replace"),
    ],
)
def test_data_synth_rejects_bad_arguments_in_its_flags_words(setup, args, message, tmp_path, capsys):
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("a file")
    elif setup == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("not a synthetic dataset")
    code = cli.main(["data", "synth", str(out), "--n-train", "6", "--n-test", "4", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_BAD_CONFIG, err
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert "write_dataset" not in err[0] and "overwrite=True" not in err[0]


def test_over_fifty_warnings_point_to_the_flag_that_lists_them_all(tiny_dataset_copy, capsys):
    """60 ignored-file warnings: the default lists 50 and names `--all`; `--all` lists every one."""
    from PIL import Image

    for i in range(60):  # tiny greyscale PNGs: each is converted to RGB, one warning per file
        Image.new("L", (32, 32), color=i).save(tiny_dataset_copy / "train" / "benign" / f"grey{i:02d}.png")
    assert cli.main(["data", "check", str(tiny_dataset_copy)]) == 0
    out = capsys.readouterr().out
    assert "more (`study data check --all` lists every one)" in out and "to_dict" not in out
    assert cli.main(["data", "check", str(tiny_dataset_copy), "--all"]) == 0
    full = capsys.readouterr().out
    assert all(f"grey{i:02d}.png" in full for i in range(60)) and "--all` lists" not in full


def test_a_newline_in_a_file_name_prints_as_one_escaped_line(tiny_dataset_copy, capsys):
    (tiny_dataset_copy / "train" / "benign" / "bad\nname.jpg").write_bytes(b"not an image")
    assert cli.main(["data", "check", str(tiny_dataset_copy)]) == cli.EXIT_BAD_DATA
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "name.jpg" in x]
    assert "bad\\nname.jpg" in line and line.startswith("  - ")


def test_a_start_that_fails_leaves_the_name_free(tmp_path, monkeypatch, capsys):
    """A start refused after validation (here: the cluster check at Ray start) writes no study record, so the
    same `study run --name` works next time instead of sending the user to `study resume`."""
    from study.run import runner
    from study.spec.config import ConfigError

    def refused(address, preset):
        raise ConfigError("--gpus-per-trial 1: the Ray cluster has 0 GPUs")

    monkeypatch.setattr(runner, "init_ray", refused)
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["run", "--preset", "smoke", "--storage", str(tmp_path), "--name", "again"]
    assert cli.main(argv) == cli.EXIT_BAD_CONFIG
    assert cli.main(argv) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert "already holds a study" not in err and not (tmp_path / "again" / "study.json").exists()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("empty", "is empty"),
        ("no rows", ""),
        ("missing column", "lacks required column(s) ['seed']"),
        ("text in a number", "test_auc"),
    ],
)
def test_report_on_a_bad_results_table_ends_with_one_line(corrupt, message, tmp_path, capsys):
    from fixtures_results import make_results

    run = tmp_path / "run"
    run.mkdir()
    results = make_results()
    if corrupt == "empty":
        (run / "results.csv").write_text("")
    else:
        if corrupt == "no rows":
            results = results.iloc[:0]
        elif corrupt == "missing column":
            results = results.drop(columns=["seed"])
        else:
            results = results.astype({"test_auc": object})
            results.loc[0, "test_auc"] = "high"
        results.to_csv(run / "results.csv", index=False)
    code = cli.main(["report", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_BAD_DATA, err
    assert len(err) == 1 and err[0].startswith("study: results error: ") and message in err[0], err


def test_synthetic_counts_too_small_for_a_validation_split_are_one_line(cli_error):
    """4 training lesions at the default malignant share give 1 malignant: no validation image of that class."""
    line = cli_error(["--preset", "smoke", "--set", "trial.synth_n_train=4"])
    assert "synth_n_train=4" in line and "each class needs at least 2" in line
