"""One place per piece of knowledge (issue 17): the task registry drives every module, and the cache and resume
keys follow the phase tags of `TrialConfig`'s fields (no TensorFlow here; the training side is in
tests/test_training.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from study import analysis as A
from study.report import labels as L
from study.report import pretext_tables as PT
from study.run.results import _arm_fields, varied_params, write_search_summary
from study.search_spaces import OptunaSpace
from study.spec import config, schema, studyfile
from study.spec.config import (
    DATA,
    EXECUTION,
    FINETUNE,
    MODEL,
    PHASES,
    PRETEXT,
    ConfigError,
    TrialConfig,
    fields_of,
    phase_values,
    resolved_task_params,
    setting,
    validate_trial,
)
from study.spec.presets import SearchSettings, StudyPreset, get_preset
from study.tasks import paper
from study.tasks import registry as pretext
from study.tasks.registry import Param, PretextTask, Search
from study.trainables import pretext_key


@pytest.fixture
def registry(monkeypatch):
    """The registry as shipped, restored after the test (tasks a test registers do not leak)."""
    monkeypatch.setattr(pretext, "TASKS", dict(pretext.TASKS))
    return pretext.TASKS


def _jigsaw_batch(images, rng, **params):
    x = pretext.check_images(images)
    checked = pretext.get_task("jigsaw").validate(x.shape[1], **params)
    return x[:, ::-1].copy() if checked["tile_count"] % 2 else x.copy(), x.copy()


def _everywhere(images, rng, **params):
    return np.ones(pretext.check_images(images).shape[:3], bool)


JIGSAW = PretextTask(
    "jigsaw",
    "Jigsaw",
    "image",
    "mse",
    (
        Param("tile_count", int, 4, minimum=2, maximum=pretext.image_side, search=Search(2, 9, log=True)),
        Param("jitter", float, 0.5, above=0, below=1, search=Search(0.1, 0.9)),
    ),
    make_batch=_jigsaw_batch,
    region=_everywhere,
)


class FakeOptunaTrial:
    """Records Optuna's define-by-run calls (`study.search_spaces.OptunaSpace`); picks the lower bound."""

    def __init__(self, task: str) -> None:
        self.task, self.calls = task, []

    def suggest_categorical(self, name, choices):
        self.calls.append((name, tuple(choices)))
        return self.task

    def suggest_float(self, name, low, high, log=False):
        self.calls.append((name, "float", low, high, log))
        return low

    def suggest_int(self, name, low, high, log=False):
        self.calls.append((name, "int", low, high, log))
        return low


# --------------------------------------------------------------------------------- the task registry


def test_a_registered_image_task_reaches_every_module(registry, tmp_path):
    """One definition: arms, study files, validation, defaults, search, results columns and Table 3."""
    pretext.register(JIGSAW)
    assert pretext.param_names()[:3] == ("patch_size", "swap_count", "swap_patch_size")
    assert pretext.param_names()[-2:] == ("tile_count", "jitter")
    # study file arm keys, typed by the registry; defaults filled in at trial time
    path = tmp_path / "jigsaw.toml"
    path.write_text('preset = "smoke"\n[[arms]]\ntask = "none"\n[[arms]]\ntask = "jigsaw"\ntile_count = 3\n')
    study = studyfile.resolve(config=path)
    trial = study.base.replace(**study.arms[1])
    assert trial.task_params == {"tile_count": 3}
    assert resolved_task_params(trial) == {"tile_count": 3, "jitter": 0.5}
    path.write_text('preset = "smoke"\n[[arms]]\ntask = "jigsaw"\ntile_count = 2.5\n')
    with pytest.raises(ConfigError, match="tile_count: expected an integer"):
        studyfile.resolve(config=path)
    with pytest.raises(ConfigError, match="^tile_count: task 'rotation' does not use"):
        validate_trial(trial.replace(task="rotation"))
    with pytest.raises(ConfigError, match="jitter must be < 1"):
        validate_trial(trial.replace(jitter=1.0))
    # the Optuna space suggests its parameters, int on a log scale, float uniform
    fake = FakeOptunaTrial("jigsaw")
    OptunaSpace(SearchSettings(tasks=("jigsaw",)), 32)(fake)
    assert ("tile_count", "int", 2, 9, True) in fake.calls and (
        "jitter",
        "float",
        0.1,
        0.9,
        False,
    ) in fake.calls
    # one results column per registered parameter, empty for the other tasks
    fields = _arm_fields(trial.to_dict(), set())
    assert (fields["tile_count"], fields["jitter"], fields["patch_size"]) == (3, 0.5, None)
    assert {"tile_count", "jitter"} <= varied_params(get_preset("search"))
    assert "tile_count" in schema.optional_int_columns() and "jitter" in schema.optional_float_columns()
    # its pretext metrics go into the paper's Table 3 with the other image tasks, after them
    rows = [
        {"arm": arm, "task": arm, "seed": s, "regime": "none", "status": "ok", "pretext_mse_mean": 10.0 + s}
        for arm in ("jigsaw", "corruption")
        for s in range(3)
    ]
    tables = PT.pretext_tables(pd.DataFrame(rows))
    assert list(tables) == ["rotation", "image", "contrastive"]
    assert list(dict.fromkeys(tables["image"]["arm"])) == ["corruption", "jigsaw"]
    assert L.arm_title("jigsaw(tile_count=3)") == "Jigsaw (tile_count=3)"


def test_a_task_may_bring_a_table_title_and_colour_of_its_own(registry):
    from study.report import plots

    task = dataclasses.replace(JIGSAW, name="tiles", title="Tile order", table="tiles", color="#123456")
    pretext.register(task)
    assert pretext.tables() == ("rotation", "image", "contrastive", "tiles")
    rows = [
        {
            "arm": "tiles",
            "task": "tiles",
            "seed": 0,
            "regime": "none",
            "status": "ok",
            "pretext_mse_mean": 1.0,
        }
    ]
    tables = PT.pretext_tables(pd.DataFrame(rows))
    assert tables["image"].empty and list(tables["tiles"]["arm"]) == ["tiles"]
    assert plots.arm_color("tiles") == "#123456" and L.task_title("tiles") == "Tile order"
    assert A.arm_order(["tiles", "baseline", "rotation"]) == ["baseline", "rotation", "tiles"]


def test_unregistered_tasks_are_named_not_dropped_silently():
    rows = [{"arm": "jigsaw", "task": "jigsaw", "seed": 0, "regime": "none", "status": "ok"}]
    assert PT.unregistered_tasks(pd.DataFrame(rows)) == ["jigsaw"]


def test_registration_refuses_parameters_that_clash(registry):
    clash = Param("lr", float, 0.1)
    with pytest.raises(ValueError, match="TrialConfig setting"):
        pretext.register(dataclasses.replace(JIGSAW, params=(clash,)))
    other_type = Param("swap_count", float, 1.0)
    with pytest.raises(ValueError, match="swap_count.*int of another task"):
        pretext.register(dataclasses.replace(JIGSAW, params=(other_type,)))
    with pytest.raises(ValueError, match="parameter name"):
        Param("arm", int, 1)
    with pytest.raises(ValueError, match="default must be a float"):
        Param("temperature", float, 1)


def test_a_custom_step_task_needs_no_batch_transform_but_says_what_it_measures():
    def step(run):
        raise AssertionError("not called here")

    task = PretextTask(
        "fake_step", "Fake step", loss="nt_xent", train=step, metrics=("top1",), headline="top1"
    )
    assert task.make_batch is None and task.head is None and task.table == "fake_step"
    with pytest.raises(ValueError, match="headline"):
        PretextTask("fake_step", "Fake step", loss="nt_xent", train=step)
    with pytest.raises(ValueError, match="make_batch .* or train"):
        PretextTask("fake_step", "Fake step", head="angle", loss="mse")
    with pytest.raises(ValueError, match="region"):
        PretextTask("x", "X", "image", "mse", make_batch=_jigsaw_batch)


def test_param_defaults_scale_and_checks_convert():
    assert paper.PATCH_SIZE.default_for(64) == 21  # 75 px at 224, scaled and rounded half up
    assert paper.SWAP_COUNT.default_for(64) == 100  # a count: not scaled
    ema = Param("ema_base", float, 0.99, minimum=0.0, below=1.0)
    assert ema.check(0, 32) == 0.0 and isinstance(ema.check(0, 32), float)  # ints accepted as floats
    with pytest.raises(ValueError, match="ema_base must be < 1.0"):
        ema.check(1, 32)
    with pytest.raises(ValueError, match="patch_size=40 is too large for a 32-px image; use at most 32"):
        paper.PATCH_SIZE.check(40, 32)


def test_float_parameters_reject_what_is_not_a_finite_number():
    temperature = Param("temperature", float, 0.2, above=0.0, search=Search(0.05, 1.0, log=True))
    for bad, match in [("0.5", "finite number"), (float("nan"), "finite number"), (0.0, "must be > 0")]:
        with pytest.raises(ValueError, match=match):
            temperature.check(bad, 32)
    fake = FakeOptunaTrial("x")
    temperature.search.suggest(fake, temperature, 32)
    assert fake.calls == [("temperature", "float", 0.05, 1.0, True)]
    with pytest.raises(ValueError, match="low > 0"):
        Search(0.0, 1.0, log=True)


def test_search_ranges_relative_to_the_image_side_and_their_overrides():
    fake = FakeOptunaTrial("missing_patch")
    OptunaSpace(SearchSettings(), 64)(fake)
    assert ("patch_size", "int", 10, 32, False) in fake.calls  # 0.15 and 0.5 of 64 px
    fake = FakeOptunaTrial("missing_patch")
    OptunaSpace(SearchSettings(param_ranges={"patch_size": (0.25, 0.25)}), 64)(fake)
    assert ("patch_size", "int", 16, 16, False) in fake.calls


def test_search_settings_of_earlier_runs_and_files_keep_their_ranges(tmp_path):
    """`study.json` of runs made before the registry held the ranges, and [search] tables copied from
    `study presets --show search` back then, give the same searched ranges."""
    saved = get_preset("search").to_dict()
    saved["base"] = {k: v for k, v in saved["base"].items() if k != "task_params"}
    saved["base"].update(patch_size=None, swap_count=None, swap_patch_size=None)  # flat fields of old runs
    search = saved["search"]
    del search["param_ranges"]
    search.update(patch_fraction_range=[0.1, 0.3], swap_count_range=[5, 50], swap_fraction_range=[0.06, 0.25])
    preset = StudyPreset.from_dict(json.loads(json.dumps(saved)))
    assert preset.base == get_preset("search").base
    assert preset.search.param_ranges == {
        "patch_size": (0.1, 0.3),
        "swap_count": (5, 50),
        "swap_patch_size": (0.06, 0.25),
    }
    path = tmp_path / "old.toml"
    path.write_text('preset = "search"\n[search]\npatch_fraction_range = [0.1, 0.3]\n')
    assert studyfile.resolve(config=path).search.param_ranges == {"patch_size": (0.1, 0.3)}
    path.write_text('preset = "search"\n[search.param_ranges]\nswap_count = [20, 40]\n')
    study = studyfile.resolve(config=path)
    assert study.search.param_ranges == {"swap_count": (20.0, 40.0)}
    assert studyfile.resolve(config=_written(tmp_path, studyfile.to_toml(study, "search"))) == study


def test_a_searcher_pickled_by_an_earlier_version_resumes_with_its_ranges():
    """Tune pickles the searcher with the Optuna space in it; `study resume` of an old search run unpickles
    SearchSettings without `param_ranges` and with the range fields of then."""
    import pickle

    old = SearchSettings()
    del old.__dict__["param_ranges"]
    old.__dict__.update(patch_fraction_range=(0.25, 0.25), swap_count_range=(10, 150))
    space = pickle.loads(pickle.dumps(OptunaSpace(old, 64)))
    assert space.settings.param_ranges == {"patch_size": (0.25, 0.25), "swap_count": (10, 150)}
    fake = FakeOptunaTrial("missing_patch")
    space(fake)
    assert ("patch_size", "int", 16, 16, False) in fake.calls


def _written(tmp_path, text):
    path = tmp_path / "round-trip.toml"
    path.write_text(text)
    return path


def test_bad_search_ranges_are_one_line_errors(tmp_path):
    from study.spec.resolve import validate_study

    search = get_preset("search")
    for ranges, match in [
        ({"lr": (0.1, 0.2)}, "not a task parameter searched"),
        ({"swap_count": (50, 5)}, "low <= high"),
    ]:
        with pytest.raises(ConfigError, match=match):
            validate_study(search.replace(search=dataclasses.replace(search.search, param_ranges=ranges)))


def test_old_trial_configs_and_arms_map_flat_parameters_into_task_params():
    flat = {**TrialConfig().to_dict(), "task": "corruption", "swap_count": 7, "patch_size": None}
    del flat["task_params"]
    trial = TrialConfig.from_dict(flat)
    assert trial.task_params == {"swap_count": 7} and TrialConfig.from_dict(trial.to_dict()) == trial
    assert trial.replace(swap_count=None).task_params == {}
    assert hash(trial) == hash(TrialConfig.from_dict(trial.to_dict()))
    with pytest.raises(ConfigError, match="unknown trial config field.*task parameters"):
        TrialConfig.from_dict({"tile_count": 3})


def test_presets_leave_task_parameters_to_the_trials_image_size():
    """Defaults are resolved once, when the trial runs: a study that changes the image size scales them."""
    demo = get_preset("demo")
    bigger = demo.replace(base=demo.base.replace(image_size=64))
    patch = {
        t.task: resolved_task_params(t)["patch_size"]
        for t in bigger.trial_configs()
        if t.task == "missing_patch"
    }
    assert patch == {"missing_patch": 21}
    text = studyfile.to_toml(demo, "demo")
    assert "# patch_size = 11  (default at 32 px)" in text


# ------------------------------------------------------------------------------------ phase tags and keys


def _other_value(f: dataclasses.Field, value):
    """A different value of the type of field `f` (validity does not matter to the keys)."""
    if f.name == "task":
        return "missing_patch" if value != "missing_patch" else "corruption"
    if f.name == "task_params":
        return {"swap_count": 7}
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 32
    if isinstance(value, float):
        return value / 2
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return (*value, value[-1]) if value else ("mel",)
    assert value is None, f.name
    return 3 if "int" in str(f.type) else "/elsewhere"


BASE = TrialConfig(task="corruption", seed=1)


def test_every_trial_config_field_is_tagged_with_the_phases_it_affects():
    for f in dataclasses.fields(TrialConfig):
        phases = f.metadata.get("phases")
        assert phases and set(phases) <= set(PHASES), f"{f.name} has no phase tag"
    assert set(fields_of(*PHASES)) == {f.name for f in dataclasses.fields(TrialConfig)}


def test_an_untagged_field_fails_before_it_can_reuse_a_stale_cache():
    untagged = dataclasses.make_dataclass(
        "Untagged", [("new_setting", int, dataclasses.field(default=0))], bases=(TrialConfig,), frozen=True
    )
    with pytest.raises(TypeError, match="new_setting.*no phase tag"):
        pretext_key(untagged(task="rotation"), "fp")
    with pytest.raises(TypeError, match="no phase tag"):
        fields_of(PRETEXT, cls=untagged)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrialConfig)])
def test_the_pretext_key_changes_exactly_with_the_pretext_fields(name):
    f = TrialConfig.__dataclass_fields__[name]
    changed = BASE.replace(**{name: _other_value(f, getattr(BASE, name))})
    if PRETEXT in f.metadata["phases"]:
        assert pretext_key(changed, "fp") != pretext_key(BASE, "fp"), name
    else:
        assert pretext_key(changed, "fp") == pretext_key(BASE, "fp"), name


def test_a_new_pretext_field_enters_the_key_and_an_execution_field_does_not():
    """The stale-cache test: a field added with a PRETEXT tag changes the key by itself, no list to edit."""
    extended = dataclasses.make_dataclass(
        "Extended",
        [("new_pretext_knob", int, setting(0, PRETEXT)), ("new_execution_knob", int, setting(0, EXECUTION))],
        bases=(TrialConfig,),
        frozen=True,
    )
    base = extended(task="rotation")
    key = pretext_key(base, "fp")
    assert pretext_key(dataclasses.replace(base, new_pretext_knob=1), "fp") != key
    assert pretext_key(dataclasses.replace(base, new_execution_knob=1), "fp") == key
    # a new pretext setting changes every key, at its default too: caches from before are never reused
    assert key != pretext_key(TrialConfig(task="rotation"), "fp")


def test_the_pretext_key_of_an_existing_config_is_unchanged(monkeypatch):
    """Keys derived from the tags equal the hand-written key of before: the smoke preset's corruption trial,
    seed 0, as the code before issue 17's registry computed it (db5e9d0ed84e12d324b54655 at cache format 3;
    05278731b1aa04ade9edea9a at format 5), here at format 6, whose key also holds the Keras backend and its
    version: the same fields otherwise, and another backend or version gives another key."""
    from study import trainables

    trial = [t for t in get_preset("smoke").trial_configs() if t.task == "corruption"][0]
    assert trainables.PRETEXT_CACHE_FORMAT == 6
    assert pretext_key(trial, "fp", backend="tensorflow 2.21.0") == "52451389f31be58ef16cad3d"
    assert pretext_key(trial, "fp", backend="jax 0.10.2") == "6b71b1d8e949cbe98aa1a849"
    assert pretext_key(trial, "fp", backend="tensorflow 2.21.1") != "52451389f31be58ef16cad3d"
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # this process's backend by default, as Keras resolves it
    assert pretext_key(trial, "fp") == pretext_key(trial, "fp", backend=trainables.backend_version("jax"))


def test_resume_compares_every_field_the_finetune_depends_on():
    resumed = set(fields_of(PRETEXT, FINETUNE))
    # the hand-written list of before, now a subset: pretext settings and task parameters count too
    before = {
        "task", "seed", "encoder", "encoder_widths", "encoder_stride", "bn_momentum", "weights", "image_size",
        "val_fraction", "label_fraction", "finetune_epochs", "lr", "batch_size", "threads", "mixed_precision",
    }  # fmt: skip
    assert before < resumed and {"task_params", "pretext_epochs", "patiences"} <= resumed
    assert not resumed & set(fields_of(EXECUTION)) and not resumed & (set(fields_of(DATA)) - {"image_size"})
    values = phase_values(BASE, PRETEXT, FINETUNE)
    assert values["task_params"] == resolved_task_params(BASE) and json.dumps(values)


def test_model_fields_are_the_architecture():
    assert set(fields_of(MODEL)) == {
        "image_size", "encoder", "encoder_widths", "encoder_stride", "bn_momentum", "mixed_precision",
    }  # fmt: skip
    assert config.phases_of(TrialConfig.__dataclass_fields__["cache_dir"]) == {EXECUTION}


def test_search_summary_lists_every_registered_parameter(registry, tmp_path):
    pretext.register(JIGSAW)
    results = pd.DataFrame(
        [{"trial_id": "a", "task": "jigsaw", "tile_count": 3, "jitter": 0.5, "lr": 1e-3, "search_score": 0.7}]
    )
    table = write_search_summary(tmp_path, results)
    assert list(table.columns) == ["trial_id", "task", "tile_count", "jitter", "lr", "search_score"]


def test_the_registrys_old_import_path_still_registers_a_task_and_says_where_it_moved():
    import importlib
    import sys

    sys.modules.pop("study.pretext", None)
    with pytest.warns(DeprecationWarning, match="study.tasks.registry"):
        old = importlib.import_module("study.pretext")
    from study.tasks import registry

    assert old.register is registry.register and old.PretextTask is registry.PretextTask
    assert old.TASKS is registry.TASKS
