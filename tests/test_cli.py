"""The `study` command: help with examples, data tools, friendly errors, no TensorFlow on the driver."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from study.cli import build_parser, main

COMMANDS = [
    ["run"],
    ["resume"],
    ["search"],
    ["presets"],
    ["report"],
    ["data"],
    ["data", "synth"],
    ["data", "check"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "study " in out


def test_presets_lists_launch_commands_and_runtimes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    from study.spec.presets import PRESETS

    for name in PRESETS:
        assert f"\n{name}\n" in f"\n{out}"
    assert out.count("Launch:") == len(PRESETS) and out.count("runtime") >= len(PRESETS)


def test_data_synth_then_check_is_clean(tmp_path, capsys):
    out = tmp_path / "lesions"
    assert (
        main(["data", "synth", str(out), "--n-train", "30", "--n-test", "10", "--size", "32", "--seed", "3"])
        == 0
    )
    assert len(list(out.glob("train/*/*.jpg"))) == 30 and len(list(out.glob("test/*/*.jpg"))) == 10
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0
    report = capsys.readouterr().out
    assert "train" in report and "benign" in report and "malignant" in report


def test_data_check_fails_with_one_line_per_planted_problem(tiny_dataset_copy, capsys):
    root = tiny_dataset_copy
    (root / "train" / "benign" / "empty.jpg").write_bytes(b"")
    (root / "train" / "benign" / "notes.jpg").write_text("this is not an image")
    good = next((root / "train" / "malignant").glob("*.jpg"))
    (root / "train" / "malignant" / "cut.jpg").write_bytes(good.read_bytes()[:200])
    shutil.copy(good, root / "test" / "malignant" / "leaked.jpg")
    Image.fromarray(np.full((40, 40, 4), 120, np.uint8), "RGBA").save(root / "train" / "benign" / "alpha.png")
    Image.fromarray(np.full((40, 40), 90, np.uint8), "L").save(root / "train" / "benign" / "grey.png")
    for f in (root / "test" / "benign").iterdir():
        f.unlink()
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    for name in ("empty.jpg", "notes.jpg", "cut.jpg", "leaked.jpg", "alpha.png", "grey.png", "test/benign"):
        assert name in out, name


def test_bad_configs_exit_2_with_one_line_and_no_traceback(tmp_path, study_env):
    cases = [
        (["run", "--preset", "huge"], "unknown preset"),
        (["run", "--seeds", "0"], "--seeds"),
        (["run", "--gpus-per-trial", "0.5"], "fractional"),
        (["run", "--preset", "paper"], "--data"),
        (["run", "--data", str(tmp_path / "missing")], "--data"),
        (["run", "--storage", "/proc/no-such-place"], "--storage"),
        (["report", str(tmp_path)], "not a study run directory"),
    ]
    for args, expected in cases:
        proc = run_cli(*args, env=study_env, timeout=300)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert expected in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])


class _ReachedTune(Exception):
    """Raised instead of building the Tuner: the study got past its start checks."""


@pytest.mark.parametrize("gpus", [0, 1], ids=["no-gpu", "one-gpu"])
def test_gpu_preset_on_a_machine_without_gpus_is_rejected_before_any_trial(
    gpus, tiny_dataset, tmp_path, monkeypatch, capsys
):
    """The paper preset (4 cores + 1 GPU per trial) on the embedded Ray of a machine whose Ray sees no GPU
    stops with one line, before Ray starts. The machine is simulated — 16 cores, the GPUs Ray would detect
    (`study.run.cluster.detected_gpus`) and what Ray reports once started (`ray.cluster_resources`) — so the
    test means the same on a laptop, a 2-core CI runner or a GPU box; the `one-gpu` case shows that the GPU
    count Ray detects is what decides."""
    import ray
    from ray import tune

    from study.run import cluster

    seen = []
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr(cluster, "detected_gpus", lambda: gpus)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: None)
    monkeypatch.setattr(ray, "shutdown", lambda: seen.append("shutdown"))

    def cluster_resources():
        seen.append("resources")
        return {"CPU": 16.0, "GPU": float(gpus)} if gpus else {"CPU": 16.0}

    def no_tuner(*a, **kw):
        raise _ReachedTune

    monkeypatch.setattr(ray, "cluster_resources", cluster_resources)
    monkeypatch.setattr(tune, "Tuner", no_tuner)
    argv = [
        "run",
        "--preset",
        "paper",
        "--data",
        str(tiny_dataset),
        "--storage",
        str(tmp_path),
        "--name",
        "gpu",
    ]
    if gpus:
        # Next the paper's ImageNet weights, on the driver: offline without the file, one line and no Ray;
        # with the file (an empty stand-in: only its presence is checked before Tune) the study reaches Tune.
        import urllib.error

        from study.train import models

        def offline(*args, **kw):
            raise urllib.error.URLError("[Errno -2] Name or service not known")

        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
        monkeypatch.setattr(models.keras.utils, "get_file", offline)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and models.IMAGENET_NOTOP_FILE in err[0] and "weights='random'" in err[0], err
        assert seen == []
        (tmp_path / "kh" / "models" / models.IMAGENET_NOTOP_FILE).write_bytes(b"")
        with pytest.raises(_ReachedTune):
            main(argv)
        assert seen == ["resources"]
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("study: error: --gpus-per-trial") and "0 GPUs" in err[0], err
    assert seen == []  # refused before Ray starts
    assert not (tmp_path / "gpu" / "study.json").exists() and not list((tmp_path / "gpu").glob("two_stage_*"))


def test_unusable_data_exits_1_before_any_trial(tiny_dataset_copy, tmp_path, study_env):
    (tiny_dataset_copy / "train" / "benign" / "empty.jpg").write_bytes(b"")
    proc = run_cli(
        "run",
        "--preset",
        "smoke",
        "--data",
        str(tiny_dataset_copy),
        "--storage",
        str(tmp_path),
        env=study_env,
        timeout=300,
    )
    assert proc.returncode == 1 and "empty.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_driver_modules_do_not_import_tensorflow():
    code = (
        "import sys, study.cli, study.run.runner, study.trainables, study.search_spaces, study.analysis, "
        "study.report.document, study.data, study.data.synth, study.tasks.registry, study.tasks.metrics; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_parser_defaults_run_the_demo():
    args = build_parser().parse_args(["run"])
    # no --preset and no --config: the demo (a study file's own preset wins when --config is given)
    assert args.preset is None and args.config is None and args.default_preset == "demo"
    assert args.storage == "runs" and args.address is None and args.set == []
