"""Bounds in one place (issue #27): every numeric field of a trial and of a study declares its bounds in its
field metadata, checked in the one resolution step before anything large is built; the trial count comes
before any per-seed object; repeated arms, regimes and fractions, a search key on a grid, a study file that is
not UTF-8 text and a pretext cache set by hand are each refused in one line (exit 2, no Ray, nothing written)."""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap

import pytest

from study import cli
from study.spec import studyfile
from study.spec.config import Bounds, ConfigError, TrialConfig
from study.spec.presets import AnalysisPlan, SearchSettings, StudyPreset, get_preset
from study.spec.resolve import finalize_study, resolve_study, validate_study

#: Numeric fields checked elsewhere than by `Bounds`: task parameters (the registry's `Param` bounds) and
#: search ranges of task parameters (`resolve._validate_param_ranges`, in the registry's units).
NOT_BOUNDED_HERE = {"task_params", "param_ranges"}
#: Fields with no natural maximum (a margin is in the metric's units).
NO_MAXIMUM = {"equivalence_margin"}


def _write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("cls", [TrialConfig, StudyPreset, SearchSettings, AnalysisPlan])
def test_every_numeric_field_of_a_trial_and_a_study_declares_its_bounds(cls):
    numeric = [
        f
        for f in dataclasses.fields(cls)
        if re.search(r"\b(int|float)\b", str(f.type)) and f.name not in NOT_BOUNDED_HERE
    ]
    assert numeric
    for f in numeric:
        bounds = f.metadata.get("bounds")
        assert isinstance(bounds, Bounds), f"{cls.__name__}.{f.name} declares no Bounds in its metadata"
        assert bounds.low is not None, f.name
        assert bounds.high is not None or f.name in NO_MAXIMUM, f"{f.name}: no sane maximum"
    trial = {f.name: f.metadata["bounds"] for f in numeric if cls is TrialConfig}
    if trial:  # the maxima
        assert trial["image_size"].high == 1024 and trial["finetune_epochs"].high == 10_000


def test_bounds_refuse_non_finite_fractional_boolean_and_huge_values():
    count = Bounds(1, 10, integer=True)
    assert count.problem(3) is None
    for bad in (0, 11, 10**20, 2.0, True, float("nan"), None, "3"):
        assert count.problem(bad) is not None, bad
    whole = Bounds(0, 16, whole=True)
    assert whole.problem(2.0) is None and whole.problem(0) is None
    for bad in (0.5, -1, math.nan, math.inf, 17):
        assert whole.problem(bad) is not None, bad
    rate = Bounds(0, 1, low_open=True)
    assert rate.problem(1e-3) is None and rate.problem(math.inf) and rate.problem(0.0)
    distinct = Bounds(0, 9, integer=True, distinct=True, item="a patience")
    assert distinct.problem((0, 3)) is None and "lists a patience twice" in distinct.problem((3, 3))


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[trial]\nfinetune_epochs = 1000000000",
            r"study.toml:3: trial.finetune_epochs: must be an integer in \[1, 10000\]",
        ),
        ("[trial]\nfinetune_epochs = 100000000000000000000", r"trial.finetune_epochs: must be an integer in"),
        (
            "[trial]\nencoder_widths = [100000, 8, 8, 16]",
            r"trial.encoder_widths: each must be an integer in \[1, 2048\]",
        ),
        ("[trial]\nbatch_size = 1000000000", r"trial.batch_size: must be an integer in \[1, 4096\]"),
        ("[trial]\nlr = inf", r"trial.lr: must be in \(0, 1\] \(got inf\)"),
        ("[trial]\npretext_lr = nan", r"trial.pretext_lr: must be in \(0, 1\] \(got nan\)"),
        ("[trial]\nimage_size = 100000", r"trial.image_size: must be an integer in \[32, 1024\]"),
        ("gpus_per_trial = nan", r"study.toml:2: gpus_per_trial: give 0 or a whole number of GPUs"),
        ("gpus_per_trial = -1", r"gpus_per_trial: give 0 or a whole number of GPUs"),
        ("gpus_per_trial = 0.5", r"gpus_per_trial: .*fractional GPUs fail"),
        ("max_failures = -1", r"study.toml:2: max_failures: must be an integer in \[0, 100\]"),
        ("max_concurrent_trials = 0", r"max_concurrent_trials: must be an integer in \[1, 2000\]"),
        ("max_concurrent_trials = -4", r"max_concurrent_trials: must be an integer in \[1, 2000\]"),
        ("cpus_per_trial = inf", r"cpus_per_trial: give a whole number of cores"),
        ("seeds = [0, 4294967296]", r"seeds: each must be an integer in \[0, 4294967295\]"),
        ("[trial]\nsynth_n_train = 100000\nimage_size = 1024", r"GiB as arrays, over the limit of 4 GiB"),
    ],
)
def test_out_of_bounds_values_in_a_study_file_are_refused_naming_file_line_and_bound(
    tmp_path, text, message, cli_error
):
    line = cli_error(["--config", str(_write(tmp_path, 'preset = "smoke"\n' + text + "\n"))])
    assert re.search(message, line), line


def test_a_gpu_fraction_is_refused_by_the_file_and_the_flag_alike(tmp_path, cli_error):
    by_file = cli_error(["--config", str(_write(tmp_path, 'preset = "smoke"\ngpus_per_trial = 0.5\n'))])
    by_flag = cli_error(["--preset", "smoke", "--gpus-per-trial", "0.5"])
    assert by_file.split("gpus_per_trial: ")[1] == by_flag.split("--gpus-per-trial: ")[1]
    assert get_preset("paper").gpus_per_trial == 1  # whole GPUs still run
    assert resolve_study("smoke", sets=["gpus_per_trial=2"]).gpus_per_trial == 2


def test_the_trial_count_is_checked_before_any_per_seed_object(monkeypatch, cli_error):
    def built(*a, **kw):
        raise AssertionError("the seed tuple was built before the trial count was checked")

    monkeypatch.setattr(StudyPreset, "with_seeds", built)
    line = cli_error(["--preset", "smoke", "--seeds", "1000000000"])
    assert "--seeds: 1000000000 seeds x 4 arms" in line and "over the limit of 2000" in line
    line = cli_error(["--preset", "smoke", "--set", "seeds=1000000000"])  # a count in a file or --set
    assert "seeds: 1000000000 seeds would be over the limit of 2000 trials" in line


def test_long_lists_of_seeds_or_arms_are_refused_by_their_length_first(tmp_path, cli_error):
    many = ",".join(map(str, range(100_000)))  # under the file size limit: the list's length refuses it
    seeds = _write(tmp_path, f'preset = "smoke"\nseeds = [{many}]\n', "seeds.toml")
    assert "seeds: 100000 seeds would be over the limit of 2000 trials" in cli_error(["--config", str(seeds)])
    arms = _write(tmp_path, 'preset = "smoke"\n' + '[[arms]]\ntask = "none"\n' * 2001, "arms.toml")
    assert "arms: 2001 arms would be over the limit of 2000 trials" in cli_error(["--config", str(arms)])


def test_search_samples_are_bounded(cli_error, capsys):
    code = cli.main(["search", "--samples", "1000000000", "--name", "x", "--storage", "/nonexistent/runs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == cli.EXIT_BAD_CONFIG
        and len(err) == 1
        and "--samples: must be an integer in [1, 2000]" in err[0]
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[[arms]]\ntask = "none"\n[[arms]]\ntask = "rotation"\n[[arms]]\ntask = "rotation"\n',
            r"study.toml: arm 3 \(task 'rotation'\) repeats arm 2",
        ),
        ("[trial]\npatiences = [3, 3]\n", r"study.toml:3: trial.patiences: \[3, 3\] lists a patience twice"),
        ("label_fractions = [0.5, 0.5]\n", r"label_fractions: .* lists a fraction twice"),
        ("seeds = [2, 2]\n", r"seeds must be distinct"),
    ],
)
def test_repeated_arms_regimes_and_fractions_are_refused_at_resolution(tmp_path, text, message, cli_error):
    line = cli_error(["--config", str(_write(tmp_path, 'preset = "smoke"\n' + text))])
    assert re.search(message, line), line


def test_arms_equal_once_defaults_are_filled_in_are_one_arm(cli_error):
    smoke = get_preset("smoke")
    default = studyfile.resolved_task_params(smoke.base.replace(task="missing_patch"))["patch_size"]
    twice = smoke.replace(arms=(*smoke.arms, {"task": "missing_patch", "patch_size": default}))
    with pytest.raises(ConfigError, match=r"arms: arm 5 \(missing_patch\) trains what arm 3 does"):
        validate_study(twice)
    line = cli_error(["--preset", "smoke", "--set", "trial.patiences=[2, 2]"])
    assert "--set: trial.patiences: [2, 2] lists a patience twice" in line


def test_a_search_key_on_a_grid_is_refused_unless_the_study_declares_a_search(tmp_path, cli_error):
    line = cli_error(["--preset", "smoke", "--set", "search.num_samples=5"])
    assert "--set: search: 'smoke' is a grid study, not a search" in line and 'preset = "search"' in line
    grid_file = _write(tmp_path, 'preset = "demo"\n[search]\nnum_samples = 5\n')
    assert "study.toml:2: search: 'study' is a grid study" in cli_error(["--config", str(grid_file)])
    # a study that declares a search: the search preset, or a file of its own with a [search] table
    assert resolve_study("search", sets=["search.num_samples=5"]).search.num_samples == 5
    own = resolve_study(config=_write(tmp_path, "seeds = 1\n[search]\nnum_samples = 3\n", "own.toml"))
    assert own.search.num_samples == 3
    with_arms = _write(
        tmp_path, 'seeds = 1\n[search]\nnum_samples = 3\n[[arms]]\ntask = "none"\n', "arms.toml"
    )
    assert "arms: a search picks its tasks from search.tasks" in cli_error(["--config", str(with_arms)])


@pytest.mark.parametrize(
    "content, message",
    [
        (
            'preset = "smoke"\nname = "caf\xe9"\n'.encode("latin-1"),
            r"study.toml:2: not UTF-8 text \(byte \d+\)",
        ),
        (bytes(range(256)) * 4, r"study.toml:\d+: not UTF-8 text"),
        (b"a = " + b"[" * 200_000 + b"]" * 200_000 + b"\n", r"study.toml: not a study file \(values nested"),
        (b"# " + b"x" * (2 << 20) + b"\n", r"study.toml: over 1 MiB, not a study file"),
    ],
    ids=["latin-1", "binary", "nested", "huge"],
)
def test_a_study_file_that_is_not_utf8_toml_text_is_one_line_naming_it(tmp_path, content, message, cli_error):
    path = tmp_path / "study.toml"
    path.write_bytes(content)
    assert re.search(message, cli_error(["--config", str(path)]))


def test_a_pretext_cache_set_by_hand_is_refused_not_silently_replaced(tmp_path, cli_error):
    path = _write(tmp_path, f'preset = "smoke"\n[trial]\npretext_cache_dir = "{tmp_path / "elsewhere"}"\n')
    line = cli_error(["--config", str(path)])
    assert (
        "study.toml:3: trial.pretext_cache_dir: set by the run itself" in line and "trial.cache_dir" in line
    )
    smoke = get_preset("smoke")
    with pytest.raises(ConfigError, match="trial.pretext_cache_dir"):
        finalize_study(smoke.replace(base=smoke.base.replace(pretext_cache_dir="/shared/cache")))
    # the run's own value, as a resolved study's file spells it, is what the run uses anyway
    resolved = resolve_study("smoke")
    again = _write(tmp_path, studyfile.to_toml(resolved, shipped="smoke"), "again.toml")
    assert resolve_study(config=again).base == resolved.base
