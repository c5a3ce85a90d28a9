"""Study files (TOML) and `--set` overrides: resolution, round trips, every rejection before Ray starts."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from study import cli
from study.spec import studyfile
from study.spec.presets import PRESETS, get_preset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

ISSUE_EXAMPLE = """\
preset = "demo"                 # start from a shipped preset
seeds = 8
data = "{data}"
[trial]
image_size = 64
finetune_epochs = 30
[[arms]]
task = "none"
[[arms]]
task = "corruption"
swap_count = 50
swap_patch_size = 9
"""


def _write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_its_study_file(name, tmp_path):
    preset = get_preset(name)
    path = _write(tmp_path, studyfile.to_toml(preset, shipped=name), f"{name}.toml")
    assert studyfile.resolve(config=path) == preset


def test_a_study_file_without_a_preset_spells_out_a_whole_study(tmp_path):
    demo = get_preset("demo")
    text = studyfile.to_toml(demo).replace('name = "demo"', 'name = "mine"')
    resolved = studyfile.resolve(config=_write(tmp_path, text))
    assert resolved.base == demo.base and resolved.arms == demo.arms and resolved.name == "mine"


def test_the_issue_example_with_set_overrides(tmp_path, tiny_dataset):
    path = _write(tmp_path, ISSUE_EXAMPLE.format(data=tiny_dataset), "cr64.toml")
    study = studyfile.resolve(None, path)
    assert study.name == "cr64" and study.seeds == tuple(range(8))
    assert study.base.image_size == 64 and study.base.finetune_epochs == 30
    assert study.base.data_path == str(tiny_dataset)
    assert study.base.encoder_stride == get_preset("demo").base.encoder_stride  # the rest from the preset
    assert study.arms == ({"task": "none"}, {"task": "corruption", "swap_count": 50, "swap_patch_size": 9})
    overridden = studyfile.resolve(
        None, path, ["trial.finetune_epochs=5", "seeds=3", "trial.patiences=[0, 2]", "cpus_per_trial=2"]
    )
    assert overridden.base.finetune_epochs == 5 and overridden.seeds == (0, 1, 2)
    assert overridden.base.patiences == (0, 2) and overridden.cpus_per_trial == 2.0
    # --set works on a preset alone, too, and the last --set wins
    demo = studyfile.resolve("demo", None, ["trial.lr=0.01", "trial.lr=0.02", "seeds=[3, 5]"])
    assert demo.base.lr == 0.02 and demo.seeds == (3, 5)


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "red"\n', r"study.toml:1: colour: unknown key"),
        ("[trial]\nfinetune_epoch = 5\n", r"study.toml:2: trial.finetune_epoch: unknown trial setting"),
        (
            'preset = "demo"\n[trial]\nfinetune_epochs = "5"\n',
            r"study.toml:3: trial.finetune_epochs: expected an int",
        ),
        ('preset = "demo"\n[trial]\nlr = true\n', r"trial.lr: expected a number"),
        (
            'preset = "demo"\n[trial]\nencoder_widths = [8, 16]\n',
            r"study.toml:3: trial.encoder_widths: need 4",
        ),
        ('preset = "demo"\nseeds = 0\n', r"seeds: need at least 1 seed"),
        ('preset = "demo"\nseeds = [1, 1]\n', r"distinct"),
        (
            'preset = "demo"\n[[arms]]\ntask = "corruption"\npatch_size = 5\nswap_count = 3\nswap_patch_size = 2\n',
            r"arm 1 \(task 'corruption'\): patch_size: task 'corruption' does not use",
        ),
        ('preset = "demo"\n[[arms]]\npatch_size = 5\n', r"arm 1 has no task"),
        ('preset = "demo"\n[[arms]]\ntask = "none"\nlr = 0.1\n', r"arm 1 has unknown key\(s\) \['lr'\]"),
        ('preset = "demo"\n[[arms]]\ntask = "jigsaw"\n', r"unknown task 'jigsaw'"),
        ('preset = "demo"\n[trial]\npatch_size = 5\n', r"patch_size belongs to an arm"),
        ('preset = "demo"\n[trial]\ntask_params = {patch_size = 5}\n', r"task_params belongs to an arm"),
        ('preset = "demo"\n[trial]\nimage_size = 36\n', r"study.toml:3: trial.image_size: 36 px cannot"),
        ('preset = "nope"\n', r"unknown preset 'nope'"),
        ("seeds = [\n", r"not valid TOML"),
    ],
)
def test_bad_study_files_are_rejected_naming_key_file_and_line(tmp_path, text, message, cli_error):
    line = cli_error(["--config", str(_write(tmp_path, text))])
    assert re.search(message, line), line


@pytest.mark.parametrize(
    "sets, message",
    [
        (["trial.finetune_epochs"], r"expected KEY=VALUE"),
        (["trial.nothing=1"], r"--set: trial.nothing: unknown trial setting"),
        (["trial.finetune_epochs=five"], r"--set: trial.finetune_epochs: expected an integer, got 'five'"),
        (["bogus=1"], r"--set: bogus: unknown key"),
    ],
)
def test_bad_set_overrides_are_rejected(sets, message, cli_error):
    line = cli_error(["--preset", "demo", *[x for s in sets for x in ("--set", s)]])
    assert re.search(message, line), line


def test_the_cli_rejects_bad_input_before_ray_starts_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, 'preset = "smoke"\n[trial]\nfinetune_epochs = 0\n')
    storage = str(tmp_path / "runs")
    assert cli.main(["run", "--config", str(path), "--storage", storage]) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune_epochs" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert cli.main(["run", "--config", str(path), "--preset", "demo"]) == cli.EXIT_BAD_CONFIG
    assert "give the preset in one place" in capsys.readouterr().err
    assert cli.main(["run", "--config", str(tmp_path / "missing.toml")]) == cli.EXIT_BAD_CONFIG
    assert "is not a file" in capsys.readouterr().err
    assert cli.main(["run", "--set", "seeds=0"]) == cli.EXIT_BAD_CONFIG
    assert "at least 1 seed" in capsys.readouterr().err


def test_presets_show_prints_a_file_that_runs_as_the_preset(capsys, tmp_path):
    assert cli.main(["presets", "--show", "paper"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# study 'paper'") and 'encoder = "resnet50"' in text
    assert studyfile.resolve(config=_write(tmp_path, text)) == get_preset("paper")


@pytest.mark.slow
def test_a_label_efficiency_study_file_runs_end_to_end_shares_pretexts_and_is_recorded(tmp_path, study_env):
    """A study file with a label-fraction grid and a --set override, through the CLI: every (arm, seed,
    fraction) runs, each pretext is trained once per (task, seed) and loaded from the cache by the other
    fraction, the report has the label-efficiency figure, and the run records the resolved study."""
    path = _write(
        tmp_path,
        """\
        preset = "smoke"
        seeds = [0, 1]
        label_fractions = [1.0, 0.5]
        [trial]
        finetune_epochs = 2
        patiences = [0, 1]
        [[arms]]
        task = "none"
        [[arms]]
        task = "corruption"
        swap_count = 20
        swap_patch_size = 4
        """,
        "tiny-study.toml",
    )
    storage = tmp_path / "runs"
    proc = run_cli(
        "run",
        "--config",
        str(path),
        "--set",
        "trial.pretext_epochs=2",
        "--storage",
        str(storage),
        "--name",
        "file",
        env=study_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = storage / "file"
    results = pd.read_csv(run / "results.csv")
    assert (results["status"] == "ok").all()
    assert set(results["arm"]) == {"baseline", "corruption"} and set(results["seed"]) == {0, 1}
    assert set(results["regime"]) == {"none", "patience1"}
    assert (
        sorted(results.groupby(["arm", "seed"])["label_fraction"].unique().map(sorted).map(tuple))
        == [(0.5, 1.0)] * 4
    )
    assert (results[results["arm"] == "corruption"]["swap_count"] == 20).all()
    # One pretext per (task, seed), shared by both fractions: the same key, trained by exactly one trial.
    pretext = results[results["arm"] == "corruption"].drop_duplicates("trial_id")
    for seed, rows in pretext.groupby("seed"):
        assert rows["pretext_key"].nunique() == 1 and len(rows) == 2, seed
        assert sorted(rows["pretext_cached"]) == [False, True], seed
        assert (rows["pretext_epochs_run"].sort_values().tolist()) == [0, 2]
    # The same labelled subset within a fraction and seed, a different one across fractions: the baseline's
    # results differ between fractions (half the labels) but not between arms' shared validation images.
    base = results[(results["arm"] == "baseline") & (results["regime"] == "none")].set_index(
        ["seed", "label_fraction"]
    )
    assert not np.allclose(base.xs(0.5, level=1)["val_loss"], base.xs(1.0, level=1)["val_loss"])
    history = pd.read_csv(run / "history.csv")
    assert set(history["label_fraction"]) == {0.5, 1.0}
    assert history[history["phase"] == "finetune"]["epoch"].max() == 2
    assert history[history["phase"] == "pretext"]["epoch"].max() == 2  # the --set override reached the trial
    # The report: a label-efficiency section with its figure, and a statement per fraction.
    report = (run / "report.md").read_text()
    assert "Label efficiency" in report and "label_efficiency.png" in report
    assert list(run.rglob("label_efficiency.png"))
    assert "50 %" in report and "100 %" in report
    # the resolved study is what the run records (resume reads it, never the file)
    recorded = json.loads((run / "study.json").read_text())["preset"]
    assert recorded["name"] == "tiny-study" and recorded["base"]["finetune_epochs"] == 2
    assert recorded["base"]["pretext_epochs"] == 2 and len(recorded["arms"]) == 2
    assert recorded["label_fractions"] == [0.5, 1.0]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["label_fractions"] == [0.5, 1.0]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_example_study_files_resolve_and_validate(path):
    from study.spec.resolve import validate_study

    study = studyfile.resolve(config=path)
    assert study.name == path.stem and study.arms
    if study.needs_data:  # a stand-in folder: the file's own data may not exist on this machine
        study = study.replace(base=study.base.replace(data_path=str(EXAMPLES)))
    validate_study(study)


def test_the_reduced_paper_example_is_the_paper_preset_but_for_its_size():
    """examples/paper-reduced.toml runs the paper preset's trials, smaller: the same settings but the epochs,
    data size, threads and precision, and the preset's arms minus two (task parameters scaled alike)."""
    from study.spec.config import resolved_task_params
    from study.spec.presets import PAPER_ARMS

    study = studyfile.resolve(config=EXAMPLES / "paper-reduced.toml")
    paper = get_preset("paper")
    reduced = {"pretext_epochs", "finetune_epochs", "synth_n_train", "synth_n_test"}
    reduced |= {"threads", "mixed_precision"}
    ours, theirs = study.base.to_dict(), paper.base.to_dict()
    assert {k for k in theirs if ours[k] != theirs[k]} == reduced
    assert study.base.weights == "imagenet" and study.seeds == (0,) and study.gpus_per_trial == 0
    assert [a["task"] for a in study.arms] == ["none", "missing_patch"]
    assert all(a in PAPER_ARMS for a in study.arms)
    patch = resolved_task_params(study.base.replace(**study.arms[1]))["patch_size"]
    assert patch == resolved_task_params(paper.base.replace(**study.arms[1]))["patch_size"] == 75


def test_the_readme_example_study_file_resolves(tmp_path):
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    study = studyfile.resolve(config=_write(tmp_path, block, "readme.toml"))
    assert study.name == "corruption-64px" and study.seeds == tuple(range(10))
    assert study.label_fractions == (0.1, 1.0) and study.arms[1]["swap_count"] == 50
    from study.spec.resolve import validate_study

    validate_study(study.replace(base=study.base.replace(data_path=None)))  # runs as written (data aside)


def test_the_readme_labels_csv_example_is_a_data_table(tmp_path):
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = next(b.split("```", 1)[0] for b in readme.split("```toml\n")[1:] if b.startswith("[data]"))
    study = studyfile.resolve("smoke", config=_write(tmp_path, 'preset = "smoke"\n' + block, "csv.toml"))
    assert study.base.data_path.endswith("HAM10000_metadata.csv")
    assert study.base.data_images == "images" and study.base.data_malignant == ("mel",)
