"""The `simclr` and `byol` registrations (`study.tasks.contrastive`): registry, study files, the pretext cache key and
a tiny pretext phase of each through `study.train.phases.run_pretext` (32 px, a 4..16-channel encoder)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from study.spec.config import ConfigError, TrialConfig
from study.spec.studyfile import resolve
from study.tasks import registry as pretext

SIZE = 32

BASE = TrialConfig(
    encoder="small",
    encoder_widths=(4, 8, 8, 16),
    image_size=SIZE,
    seed=0,
    threads=1,
    finetune_epochs=1,
    pretext_epochs=2,
    pretext_batch_size=8,
    pretext_lr=3e-3,
)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Both tasks registered for this module (importing `study.tasks` registers them), and the registry put
    back afterwards, so later test modules see only what `study.tasks` registers itself."""
    before = dict(pretext.TASKS)
    from study.tasks import contrastive as ssl_tasks

    for task in (ssl_tasks.SIMCLR, ssl_tasks.BYOL):
        pretext.TASKS.setdefault(task.name, task)
    yield
    pretext.TASKS.clear()
    pretext.TASKS.update(before)


# ------------------------------------------------------------------------------------------ the registry
def test_both_tasks_are_registered_with_one_contrastive_table():
    simclr, byol = pretext.get_task("simclr"), pretext.get_task("byol")
    for task in (simclr, byol):
        assert task.step is not None and task.train is None and task.make_batch is None and task.head is None
        assert task.table == "contrastive"
        assert task.headline == "top1" and "top1" in task.metrics and "top1" in task.higher_is_better
        assert ("top1", "top1") in task.reference_pairs
    assert "temperature" in simclr.param_names and "ema_base" not in simclr.param_names
    assert "ema_base" in byol.param_names and "temperature" not in byol.param_names
    assert pretext.tables().count("contrastive") == 1
    # the methods are declared by what they are (study.train implements them without naming a task)
    assert (simclr.loss, simclr.step.predictor, simclr.step.ema_target) == ("nt_xent", False, False)
    assert (byol.loss, byol.step.predictor, byol.step.ema_target) == ("normalized_mse", True, True)
    # no parameter is a trial setting: the step reads pretext_batch_size / pretext_lr from the trial
    assert not set(simclr.param_names + byol.param_names) & set(TrialConfig.__dataclass_fields__)
    for name in ("temperature", "ema_base", "projection_width", "view_strength", "crop_scale_min"):
        assert name in pretext.param_names()
        assert pretext.param_spec(name).search is not None


def test_a_two_view_step_must_be_a_method_the_study_implements():
    import dataclasses

    simclr = pretext.get_task("simclr")
    with pytest.raises(ValueError, match="is not implemented"):
        dataclasses.replace(simclr, name="moco", step=dataclasses.replace(simclr.step, ema_target=True))
    with pytest.raises(ValueError, match="loss is one of"):
        dataclasses.replace(simclr, name="moco", loss="info_nce")
    with pytest.raises(ValueError, match="replaces make_batch, train and head"):
        dataclasses.replace(simclr, name="moco", head="image")


def test_importing_the_registry_imports_no_tensorflow():
    code = (
        "import sys, study.tasks.contrastive, study.tasks.registry as p; assert {'simclr', 'byol'} <= set(p.TASKS); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_parameters_validate_with_one_line_messages():
    assert pretext.default_params("simclr", SIZE) == {
        "temperature": 0.2,
        "projection_width": 256,
        "projection_dim": 64,
        "view_strength": 0.5,
        "crop_scale_min": 0.6,
    }
    assert pretext.default_params("byol", 64)["ema_base"] == 0.99
    assert pretext.resolve_params("simclr", SIZE, {"temperature": 0.5})["temperature"] == 0.5
    for task, given, match in [
        ("simclr", {"temperature": 0.0}, r"temperature must be > 0.0; got 0.0"),
        ("simclr", {"temperature": -1}, r"temperature must be > 0.0"),
        ("simclr", {"temperature": "hot"}, r"temperature must be a finite number"),
        ("byol", {"ema_base": 1.0}, r"ema_base must be < 1.0"),
        ("byol", {"temperature": 0.2}, r"does not use parameter\(s\) \['temperature'\]"),
        ("simclr", {"crop_scale_min": 1.5}, r"crop_scale_min=1.5 is too large"),
        ("simclr", {"view_strength": -0.1}, r"view_strength must be >= 0.0"),
        ("byol", {"projection_dim": 0}, r"projection_dim must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            pretext.resolve_params(task, SIZE, given)
        assert "\n" not in str(err.value)


def test_a_study_file_names_them_as_arms(tmp_path):
    from study.spec.resolve import validate_study

    path = tmp_path / "ssl.toml"
    path.write_text(
        'preset = "smoke"\n[[arms]]\ntask = "none"\n[[arms]]\ntask = "simclr"\ntemperature = 0.5\n'
        '[[arms]]\ntask = "byol"\nema_base = 0.95\n'
    )
    study = resolve(config=path)
    validate_study(study)
    tasks = {t.task: t for t in study.trial_configs()}
    assert set(tasks) == {"none", "simclr", "byol"}
    assert tasks["simclr"].task_params == {"temperature": 0.5}
    assert tasks["byol"].task_params == {"ema_base": 0.95}
    path.write_text('preset = "smoke"\n[[arms]]\ntask = "simclr"\ntemperature = -0.1\n')
    with pytest.raises(ConfigError, match=r"arm 1 \(task 'simclr'\).*temperature must be > 0"):
        validate_study(resolve(config=path))


def test_the_pretext_key_holds_the_parameters():
    from study.trainables import pretext_key

    simclr = BASE.replace(task="simclr")
    key = pretext_key(simclr, "fp")
    assert pretext_key(simclr.replace(temperature=0.5), "fp") != key
    assert pretext_key(simclr.replace(temperature=0.2), "fp") == key  # the default, given explicitly
    assert pretext_key(simclr.replace(temperature=0.5), "fp") == pretext_key(
        simclr.replace(temperature=0.5), "fp"
    )
    assert pretext_key(BASE.replace(task="byol"), "fp") != key
    assert pretext_key(simclr.replace(crop_scale_min=0.3), "fp") != key


def test_results_columns_include_parameters_and_metrics():
    from study.spec import schema

    floats = schema.optional_float_columns()
    for col in (
        "temperature",
        "ema_base",
        "view_strength",
        "crop_scale_min",
        "pretext_top1",
        "pretext_align",
    ):
        assert col in floats
    assert {"projection_width", "projection_dim"} <= set(schema.optional_int_columns())


# ------------------------------------------------------------------------------------ a tiny pretext phase
@pytest.fixture(scope="module")
def data():
    from study.data import DecodedData, Split
    from study.data.synth import render_lesions

    rng = np.random.default_rng(5)

    def split(n: int, name: str) -> Split:
        labels = (np.arange(n) % 2).astype(np.int64)
        images = render_lesions(labels.astype(bool), SIZE, rng)
        return Split(images=images, labels=labels, paths=[f"{name}/{i}.png" for i in range(n)])

    return DecodedData(
        train=split(40, "train"),
        test=split(16, "test"),
        fingerprint="ssl-synthetic",
        root="<memory>",
        image_size=SIZE,
        notes=[],
    )


@pytest.mark.slow
@pytest.mark.parametrize("task", ["simclr", "byol"])
def test_a_tiny_pretext_phase_is_finite_judged_and_bitwise_reproducible(task, data):
    from study.train import phases as training

    training.configure_tensorflow(1)
    trial = BASE.replace(task=task)
    epochs: list[int] = []
    first = training.run_pretext(trial, data, on_epoch=lambda e, logs: epochs.append(e))
    second = training.run_pretext(trial, data)
    assert first.task == task and not first.diverged and epochs == [1, 2] and len(first.history) == 2
    metrics = first.metrics
    assert metrics["headline"] == "top1" and isinstance(metrics["learned"], bool)
    for name in (*pretext.get_task(task).metrics, "ref_top1", "ref_chance_top1", "ref_initial_top1"):
        assert np.isfinite(metrics[name]), name
    assert metrics["group_size"] == trial.pretext_batch_size
    assert len(first.encoder_weights) == len(second.encoder_weights)
    for a, b in zip(first.encoder_weights, second.encoder_weights):
        np.testing.assert_array_equal(a, b)
    assert first.history == second.history and first.metrics == second.metrics


class _Suggestions:
    """Records Optuna's define-by-run calls; the task is `task`, every other choice the first."""

    def __init__(self, task: str) -> None:
        self.task, self.calls = task, {}

    def suggest_categorical(self, name, choices):
        self.calls[name] = tuple(choices)
        return self.task if name == "task" else choices[0]

    def suggest_float(self, name, low, high, log=False):
        self.calls[name] = ("float", low, high, log)
        return low

    def suggest_int(self, name, low, high, log=False):
        self.calls[name] = ("int", low, high, log)
        return low


def test_study_search_draws_each_methods_own_parameters():
    from study.search_spaces import OptunaSpace
    from study.spec.presets import SearchSettings

    settings = SearchSettings(tasks=("none", "simclr", "byol"))
    simclr, byol = _Suggestions("simclr"), _Suggestions("byol")
    OptunaSpace(settings, SIZE)(simclr)
    OptunaSpace(settings, SIZE)(byol)
    assert simclr.calls["temperature"] == ("float", 0.05, 1.0, True) and "ema_base" not in simclr.calls
    assert byol.calls["ema_base"] == ("float", 0.9, 0.999, False) and "temperature" not in byol.calls
    for calls in (simclr.calls, byol.calls):
        assert calls["projection_width"] == (64, 128, 256, 512)
        assert {"projection_dim", "view_strength", "crop_scale_min"} <= set(calls)
        assert "batch_size" not in calls and "pretext_batch_size" not in calls


def test_the_pretext_batch_size_is_searched_when_the_study_gives_choices(tmp_path):
    """SimCLR's negatives are 2B - 2 per view: `[search] pretext_batch_sizes` makes B a searched setting."""
    from study.search_spaces import OptunaSpace, search_constants, searched_settings
    from study.spec.config import ConfigError
    from study.spec.presets import SearchSettings, get_preset
    from study.spec.resolve import validate_study

    settings = SearchSettings(tasks=("none", "simclr"), pretext_batch_sizes=(16, 64))
    simclr, none = _Suggestions("simclr"), _Suggestions("none")
    OptunaSpace(settings, SIZE)(simclr)
    OptunaSpace(settings, SIZE)(none)
    assert simclr.calls["pretext_batch_size"] == (16, 64) and "pretext_batch_size" not in none.calls
    preset = get_preset("search").replace(search=settings)
    assert "pretext_batch_size" in searched_settings(settings)
    # searched, so not also a constant of the Tune space (the suggestion decides)
    assert "pretext_batch_size" not in search_constants(preset)
    assert "pretext_batch_size" in search_constants(get_preset("search"))
    validate_study(preset)
    from study.spec.studyfile import resolve

    path = tmp_path / "search.toml"
    path.write_text(
        'preset = "search"\n[search]\ntasks = ["none", "simclr"]\npretext_batch_sizes = [16, 64]\n'
    )
    assert resolve(None, path).search == settings  # a study file says it the same way
    bad = preset.replace(search=SearchSettings(tasks=("simclr",), pretext_batch_sizes=(16, 0)))
    with pytest.raises(ConfigError, match="pretext_batch_size"):
        validate_study(bad)


# ------------------------------------------------------------------------------------------- a whole study
def _registered_by_the_cli() -> bool:
    """Whether a fresh process (the `study` CLI, a Ray worker) has the tasks: importing any module of
    `study.tasks` imports the package, which imports every task module."""
    code = "import study.tasks.registry as p; print('simclr' in p.TASKS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


@pytest.mark.slow
def test_a_six_arm_study_reports_every_verdict_and_the_cost_benefit_table(tmp_path, study_env):
    """Issue 17's "done when": baseline, the paper's three pretexts, SimCLR and BYOL through Ray Tune (a
    study file, as a user writes one); the report judges each pretext against its reference and sets its
    cost against its gain."""
    import re

    import pandas as pd
    from conftest import run_cli

    if not _registered_by_the_cli():
        pytest.skip("study.tasks does not import study.tasks.contrastive: the CLI does not know simclr")
    arms = "".join(f'[[arms]]\ntask = "{t}"\n' for t in ("none", "rotation", "missing_patch", "corruption"))
    path = tmp_path / "six-arms.toml"
    path.write_text(
        'preset = "smoke"\nseeds = [0, 1]\n[trial]\nfinetune_epochs = 1\npatiences = [0]\n'
        f'pretext_epochs = 2\n{arms}[[arms]]\ntask = "simclr"\ntemperature = 0.5\n[[arms]]\ntask = "byol"\n'
    )
    storage = tmp_path / "runs"
    proc = run_cli("run", "--config", str(path), "--storage", str(storage), "--name", "six", env=study_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = storage / "six"
    results = pd.read_csv(run / "results.csv")
    ssl = ["rotation", "missing_patch", "corruption", "simclr", "byol"]
    assert (results["status"] == "ok").all() and set(results["arm"]) == {"baseline", *ssl}
    simclr = results[results["arm"] == "simclr"]
    assert (simclr["temperature"] == 0.5).all() and (simclr["crop_scale_min"] == 0.6).all()
    assert simclr["pretext_key"].nunique() == 2  # one pretext per seed
    pretexts = results[results["task"] != "none"]
    # every pretext phase recorded its verdict and its cost, on the CPU it ran on
    assert pretexts["pretext_learned"].notna().all() and (pretexts["pretext_device"] == "CPU").all()
    assert (pretexts["pretext_seconds"] > 0).all() and (pretexts["pretext_flops"] > 0).all()
    # 2 epochs over the 64 training images (80 less the validation fifth); SimCLR and BYOL draw each once
    # per epoch too (as two views: their FLOPs count both), batches of 16 leaving no remainder
    assert (pretexts["pretext_images_seen"] == 2 * 64).all()
    table = pd.read_csv(run / "pretext_contrastive.csv")
    assert set(table["arm"]) == {"simclr", "byol"} and "pretext_top1" in set(table["metric"])
    cost = pd.read_csv(run / "cost_benefit.csv")
    assert sorted(cost["arm"]) == sorted(ssl) and cost["gain_per_device_hour"].notna().all()
    np.testing.assert_allclose(cost["gain"] / cost["device_hours_mean"], cost["gain_per_device_hour"])

    md = (run / "report.md").read_text()
    section = md.split("## Cost-benefit of the pretext phases", 1)[1].split("\n## ", 1)[0]
    for title in ("Rotation prediction", "Missing patch", "Corruption removal", "SimCLR", "BYOL"):
        verdict = re.search(rf"^\| {title} \| [^|]*\(headline\)[^\n]*(learned on \d of 2 seeds)", md, re.M)
        assert verdict, f"no learned-vs-reference verdict for {title}"
        assert re.search(rf"^\| {title} \| CPU \| 2 \| \d", section, re.M), f"no cost row for {title}"
    assert "n/a" not in section and "CPU-h" in section
    assert (run / "figures" / "examples_simclr.png").is_file() and (
        run / "figures" / "examples_byol.png"
    ).is_file()
