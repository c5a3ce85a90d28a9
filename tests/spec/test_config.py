"""Config validation, presets and search spaces: everything is checked on the driver before a trial starts."""

from __future__ import annotations

import shutil
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.run.rundir import check_storage
from study.search_spaces import grid_space, optuna_space
from study.spec.config import ConfigError, TrialConfig, regime_name, resolved_task_params, validate_trial
from study.spec.presets import PRESETS, arm_name, describe_presets, get_preset
from study.spec.resolve import apply_flags, validate_study
from study.tasks.registry import get_task


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"task": "jigsaw"}, "task"),
        ({"encoder": "vgg"}, "encoder"),
        ({"image_size": 48}, "image_size"),
        ({"encoder_stride": 8, "image_size": 36}, "image_size"),
        ({"encoder_stride": 4}, "encoder_stride"),
        ({"encoder": "resnet50", "encoder_stride": 8}, "encoder_stride"),
        ({"bn_momentum": 1.0}, "bn_momentum"),
        ({"task": "rotation", "patch_size": 5}, "patch_size"),
        ({"task": "none", "swap_count": 5}, "swap_count"),
        ({"bn_momentum": -0.1}, "bn_momentum"),
        ({"image_size": 16}, "image_size"),
        ({"lr": 0.0}, "lr"),
        ({"pretext_lr": -1e-3}, "pretext_lr"),
        ({"patiences": (0, -1)}, "patiences"),
        ({"patiences": ()}, "patiences"),
        ({"finetune_epochs": 0}, "finetune_epochs"),
        ({"seed": -3}, "seed"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"label_fraction": 0.0}, "label_fraction"),
        ({"weights": "imagenet", "encoder": "small"}, "weights"),
        ({"task": "missing_patch", "patch_size": 65, "image_size": 64}, "missing_patch"),
        ({"task": "corruption", "swap_patch_size": 80, "image_size": 64}, "corruption"),
        ({"task": "corruption", "swap_count": 0}, "corruption"),
        ({"task": "corruption", "swap_count": -5}, "corruption"),
    ],
)
def test_bad_trial_configs_are_rejected_with_the_field_named(changes, field):
    with pytest.raises(ConfigError) as info:
        validate_trial(TrialConfig().replace(**changes))
    assert str(info.value).startswith(field), str(info.value)
    assert "\n" not in str(info.value)


def test_every_preset_is_valid_and_documented():
    for name in PRESETS:
        preset = get_preset(name)
        doc = PRESETS[name].__doc__
        assert "Launch:" in doc and "runtime" in doc.lower(), name
        if preset.needs_data:
            with pytest.raises(ConfigError, match="--data"):
                validate_study(preset)
            preset = preset.replace(base=preset.base.replace(data_path=str(sys.prefix)))
        validate_study(preset)
    text = describe_presets()
    assert all(name in text for name in PRESETS)


def test_comparison_presets_have_the_seeds_their_holm_family_needs():
    """A preset's seed count is the smallest at which its study-wise Holm family can reach significance
    (the docstrings' claim): one seed fewer and no result could ever be significant."""
    from study.analysis import min_n_for_significance

    for name in ("demo", "cpu-real", "six-arms"):
        preset = get_preset(name)
        m = (len(preset.arms) - 1) * len(preset.base.patiences) * len(preset.fractions())
        assert len(preset.seeds) == min_n_for_significance(0.05, m), name
    six = get_preset("six-arms")
    assert [a["task"] for a in six.arms] == [
        "none",
        "rotation",
        "missing_patch",
        "corruption",
        "simclr",
        "byol",
    ]
    assert six.base == get_preset("demo").base  # the demo's settings: only the arms and seeds differ


def test_fine_tune_checkpoints_every_k_epochs_and_after_the_last():
    """The presets' checkpoint cadence (README "How much is redone"): a resumed trial redoes at most k."""
    from study.trainables import checkpoints_after

    def checkpointed(trial):
        return [e for e in range(1, trial.finetune_epochs + 1) if checkpoints_after(trial, e)]

    demo = get_preset("demo").base
    assert (demo.checkpoint_every, demo.finetune_epochs) == (4, 16)
    assert checkpointed(demo) == [4, 8, 12, 16]
    assert checkpointed(demo.replace(finetune_epochs=10)) == [4, 8, 10]
    assert get_preset("cpu-real").base.checkpoint_every == get_preset("search").base.checkpoint_every == 4
    assert checkpointed(get_preset("smoke").base) == [1, 2, 3]  # the resume tests restart from each
    assert get_preset("paper").base.checkpoint_every == 1


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="demo"):
        get_preset("huge")


def test_param_space_holds_conditional_parameters_only_where_they_apply():
    from ray import tune

    preset = get_preset("demo")
    space = grid_space(preset)
    arms = space["arm"]["grid_search"]
    assert {a["task"] for a in arms} == {"none", "rotation", "missing_patch", "corruption"}
    for arm in arms:
        used = get_task(arm["task"]).param_names if arm["task"] != "none" else ()
        assert set(arm) <= {"task", *used}
        # The trial runs with exactly its task's parameters (defaults filled in at its image size).
        assert set(resolved_task_params(preset.base.replace(**arm))) == set(used)
    assert space["seed"]["grid_search"] == list(preset.seeds)
    # The fixed part carries no task parameter at all: a rotation trial never sees swap_count.
    assert not {"task", "patch_size", "swap_count", "swap_patch_size"} & set(space)
    assert space["task_params"] == {}
    assert isinstance(space["arm"], dict) and tune.grid_search([1]) == {"grid_search": [1]}


def test_paper_preset_matches_the_paper():
    p = get_preset("paper")
    b = p.base
    assert (b.encoder, b.image_size, b.lr, b.pretext_lr, b.finetune_epochs, b.pretext_epochs) == (
        "resnet50",
        224,
        0.01,
        0.01,
        100,
        100,
    )
    assert b.val_fraction == 0.2 and tuple(b.patiences) == (0, 3, 10)
    arms = {a["task"]: resolved_task_params(b.replace(**a)) for a in p.arms}
    assert arms["missing_patch"]["patch_size"] == 75
    assert (arms["corruption"]["swap_count"], arms["corruption"]["swap_patch_size"]) == (100, 30)
    assert p.needs_gpu and p.gpus_per_trial >= 1
    # The paper's encoders start from ImageNet weights (baseline and pretext phases alike).
    assert b.weights == "imagenet" and b.weights_path is None


def test_random_init_of_the_paper_preset_is_a_choice_in_a_study_file(tmp_path):
    from study.spec import studyfile

    path = tmp_path / "random.toml"
    path.write_text('preset = "paper"\n[trial]\nweights = "random"\n')
    assert studyfile.resolve(config=path).base.weights == "random"
    path.write_text(f'preset = "paper"\n[trial]\nweights_path = "{tmp_path / "w.h5"}"\n')
    assert studyfile.resolve(config=path).base.weights_path == str(tmp_path / "w.h5")


def test_task_parameter_defaults_scale_with_image_size():
    assert resolved_task_params(TrialConfig(task="missing_patch", image_size=224)) == {"patch_size": 75}
    small = resolved_task_params(TrialConfig(task="corruption", image_size=32))
    assert small["swap_count"] == 100 and 1 <= small["swap_patch_size"] < 30
    assert resolved_task_params(TrialConfig(task="none")) == {}


def test_overrides_are_validated():
    demo = get_preset("demo")
    assert len(apply_flags(demo, seeds=3).seeds) == 3
    with pytest.raises(ConfigError, match="--seeds"):
        apply_flags(demo, seeds=0)
    with pytest.raises(ConfigError, match="fractional"):
        apply_flags(demo, gpus_per_trial=0.5)
    with pytest.raises(ConfigError, match="--cpus-per-trial"):
        apply_flags(demo, cpus_per_trial=0)
    with pytest.raises(ConfigError, match="--samples"):
        apply_flags(demo, samples=5)
    assert apply_flags(demo, cpus_per_trial=2).base.threads == 2
    assert apply_flags(demo, mixed_precision=True).base.mixed_precision is True
    assert apply_flags(get_preset("paper"), mixed_precision=False).base.mixed_precision is False


def test_cli_mixed_precision_switch_reaches_the_trials(monkeypatch):
    from study import cli
    from study.run import runner

    seen = []
    monkeypatch.setattr(runner, "run_study", lambda preset, **kw: seen.append(preset) or Path("x"))
    assert cli.main(["run", "--preset", "smoke", "--mixed-precision", "on"]) == 0
    assert seen[-1].base.mixed_precision is True
    assert cli.main(["run", "--preset", "paper", "--data", ".", "--mixed-precision", "off"]) == 0
    assert seen[-1].base.mixed_precision is False
    assert cli.main(["run", "--preset", "smoke"]) == 0
    assert seen[-1].base.mixed_precision is get_preset("smoke").base.mixed_precision


def test_unwritable_storage_is_rejected(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="--storage"):
        check_storage(blocker / "runs")


def test_arm_names_and_regimes():
    assert arm_name({"task": "none"}) == "baseline"
    assert arm_name({"task": "corruption", "swap_count": 50, "swap_patch_size": 4}) == "corruption"
    assert (
        arm_name({"task": "corruption", "swap_count": 50, "swap_patch_size": 4}, {"swap_count"})
        == "corruption(swap_count=50)"
    )
    assert [regime_name(p) for p in (0, 3, 10)] == ["none", "patience3", "patience10"]


def test_trial_config_round_trips_and_rejects_unknown_fields():
    t = TrialConfig(task="corruption", task_params={"swap_count": 7}, patiences=(0, 2))
    assert TrialConfig.from_dict(t.to_dict()) == t
    with pytest.raises(ConfigError, match="unknown trial config field"):
        TrialConfig.from_dict({"task": "none", "learning_rate": 0.1})


def test_optuna_space_suggests_task_parameters_only_for_their_task():
    optuna = pytest.importorskip("optuna")
    preset = get_preset("search")
    define = optuna_space(preset.search, preset.base.image_size)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(30):
        trial = study.ask()
        define(trial)
        params = trial.params
        seen.setdefault(params["task"], set()).update(params)
        study.tell(trial, 0.5)
        validate_trial(TrialConfig.from_dict({**preset.base.to_dict(), **params}))
    assert "swap_count" not in seen.get("rotation", set()) and "patch_size" not in seen.get("rotation", set())
    assert "patch_size" in seen["missing_patch"] and "swap_count" in seen["corruption"]


def test_a_nearly_full_disk_is_rejected_at_start(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(ConfigError, match="free"):
        check_storage(tmp_path / "runs")


@settings(max_examples=150, deadline=None)
@given(
    task=st.sampled_from(["none", "rotation", "rotation4", "missing_patch", "corruption", "jigsaw"]),
    image_size=st.integers(-8, 300),
    patch_size=st.one_of(st.none(), st.integers(-5, 300)),
    swap_count=st.one_of(st.none(), st.integers(-5, 200)),
    swap_patch_size=st.one_of(st.none(), st.integers(-5, 200)),
    lr=st.floats(-1, 1, allow_nan=False),
    patience=st.integers(-3, 12),
    seed=st.integers(-2, 5),
)
def test_any_config_is_either_rejected_in_one_line_or_runs_its_pretext(
    task, image_size, patch_size, swap_count, swap_patch_size, lr, patience, seed
):
    """Property: a config is rejected with one line naming the field, or its pretext transform runs."""
    trial = TrialConfig(task=task, image_size=image_size, lr=lr, patiences=(0, patience), seed=seed).replace(
        patch_size=patch_size, swap_count=swap_count, swap_patch_size=swap_patch_size
    )
    try:
        validate_trial(trial)
    except ConfigError as exc:
        assert "\n" not in str(exc) and ":" in str(exc)
        return
    assert image_size % 32 == 0 and lr > 0 and patience >= 0 and seed >= 0
    if task != "none":
        images = np.zeros((2, image_size, image_size, 3), np.uint8)
        inputs, _ = get_task(task).make_batch(images, np.random.default_rng(0), **resolved_task_params(trial))
        assert inputs.shape == images.shape
