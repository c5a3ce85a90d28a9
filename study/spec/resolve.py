"""One resolution step from what a user typed to the study that runs.

Order, each step overriding the last: a shipped preset (`--preset`, the study file's `preset = ...`, else the
command's default), the study file's keys (`--config`), each `--set key=value`, the dedicated flags
(`--seeds`, `--data`, `--cpus-per-trial`, ...), then what every run needs (`finalize_study`: the run's own
pretext cache, every fine-tune epoch reported to ASHA). `resolve_study` returns one immutable, validated
`StudyPreset`; the runner only consumes it, records it in the run's `study.json` and manifest, and `study
resume` runs the recorded one. Everything here runs before Ray starts and imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from study.spec import schema, studyfile
from study.spec.backend import study_backend
from study.spec.config import (  # PRETEXT_CACHE: re-exported, where it was defined before
    PRETEXT_CACHE,
    ConfigError,
    check_bounds,
    field_bounds,
    regime_name,
    synth_class_counts,
    synth_size_problem,
    validate_trial,
)
from study.spec.presets import MAX_LOOKS, MAX_TRIALS, AnalysisPlan, SearchSettings, StudyPreset, repeated_arm
from study.tasks import registry


@dataclasses.dataclass(frozen=True)
class Flags:
    """The dedicated command-line flags (None: not given). Applied after the study file and `--set`."""

    data: str | None = None
    seeds: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    mixed_precision: bool | None = None
    samples: int | None = None
    asha: bool | None = None


def resolve_study(
    preset: str | None = None,
    config: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    flags: Flags = Flags(),
    default_preset: str = "demo",
) -> StudyPreset:
    """The study that runs: preset or file (`default_preset` when neither is given), then `--set`, then
    flags, then `finalize_study`. Raises ConfigError naming the setting."""
    if preset is None and config is None:
        preset = default_preset
    study = studyfile.resolve(preset, config, sets)
    return finalize_study(apply_flags(study, **dataclasses.asdict(flags)))


def finalize_study(preset: StudyPreset) -> StudyPreset:
    """`preset` as it runs, validated: its pretext cache is the run's (`PRETEXT_CACHE`), an ASHA search
    reports every fine-tune epoch (ASHA compares trials at fine-tune epochs), and its Keras backend is named
    (`spec.backend.study_backend`: the study's, else the environment's; refused when the two differ or it is
    not installed here). The last step of `resolve_study`; for studies built in code (tests, benchmarks) the
    only one. A pretext cache set elsewhere is refused, not silently replaced."""
    if preset.base.pretext_cache_dir not in (None, PRETEXT_CACHE):
        raise ConfigError(
            f"trial.pretext_cache_dir: {preset.base.pretext_cache_dir!r} would be replaced: each run shares "
            f"pretext weights between its own trials in RUN_DIR/{PRETEXT_CACHE}; leave it unset"
        )
    base = preset.base.replace(pretext_cache_dir=PRETEXT_CACHE)
    if preset.search is not None and preset.search.asha:
        base = base.replace(report_every=1)
    study = preset.replace(base=base, backend=study_backend(preset.backend))
    validate_study(study)
    return study.replace(analysis=declared_analysis(study))


def declared_analysis(preset: StudyPreset) -> AnalysisPlan:
    """`preset.analysis` with its defaults filled in (the longest patience's regime; the smallest label
    fraction) and checked against the study, so the run records the primary analysis it declared."""
    plan = preset.analysis
    check_bounds(plan, "analysis.")
    regimes = [regime_name(p) for p in preset.base.patiences]
    regime = plan.primary_regime or regime_name(max(preset.base.patiences))
    if regime not in regimes:
        raise ConfigError(
            f"analysis.primary_regime: {regime!r} is not a regime of this study; choose one of "
            f"{', '.join(regimes)} (from trial.patiences)"
        )
    fraction = min(preset.fractions()) if plan.primary_fraction is None else plan.primary_fraction
    if fraction not in preset.fractions():
        raise ConfigError(
            f"analysis.primary_fraction: {fraction:g} is not a label fraction of this study; choose one of "
            f"{', '.join(f'{f:g}' for f in preset.fractions())}"
        )
    _check_looks(plan.looks, len(preset.seeds))
    metrics = (*schema.CLASSIFICATION_METRICS, "test_loss")
    if plan.metric not in metrics:
        raise ConfigError(
            f"analysis.metric: {plan.metric!r} is not a results metric; choose one of {', '.join(metrics)}"
        )
    return dataclasses.replace(plan, primary_regime=regime, primary_fraction=fraction)


def _check_looks(looks: tuple[int, ...], seeds: int) -> None:
    """One-line `ConfigError` for planned looks (each a seed count in bounds: `check_bounds`) that do not
    increase, are too many, or do not include the seeds the study runs."""
    if not looks:
        return
    if list(looks) != sorted(looks):
        raise ConfigError(f"analysis.looks: must increase, e.g. [10, 20, 30]; got {list(looks)}")
    if len(looks) > MAX_LOOKS:
        raise ConfigError(f"analysis.looks: at most {MAX_LOOKS} looks; got {len(looks)}")
    if seeds not in looks:
        raise ConfigError(
            f"analysis.looks: the {seeds} seeds the study runs must be one of its looks {list(looks)}; "
            f"set seeds = {looks[0]} or add {seeds} to the looks"
        )


def check_resolved(preset: StudyPreset) -> None:
    """`TypeError` for a study that did not go through `finalize_study` (a caller's mistake, not the user's)."""
    if preset.base.pretext_cache_dir != PRETEXT_CACHE:
        raise TypeError(
            "run_study runs a resolved study: pass it through study.spec.resolve.resolve_study or finalize_study"
        )


def apply_flags(
    preset: StudyPreset,
    *,
    data: str | None = None,
    seeds: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    samples: int | None = None,
    asha: bool | None = None,
    mixed_precision: bool | None = None,
) -> StudyPreset:
    """The preset with command-line flags applied (validated afterwards by `validate_study`; each flag that
    sets a bounded field is checked against the field's bounds here, before anything is built from it)."""
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds: need at least 1 seed (got {seeds}); paired tests need >= 7")
        check_trial_count(preset, seeds, "--seeds")  # before the seed tuple is built
        preset = preset.with_seeds(seeds)
    if data is not None:
        preset = preset.replace(base=preset.base.replace(data_path=str(Path(data).expanduser().resolve())))
    if cpus_per_trial is not None:
        _check_flag("--cpus-per-trial", cpus_per_trial, StudyPreset, "cpus_per_trial")
        threads = max(1, int(cpus_per_trial))
        preset = preset.replace(cpus_per_trial=cpus_per_trial, base=preset.base.replace(threads=threads))
    if gpus_per_trial is not None:
        _check_flag("--gpus-per-trial", gpus_per_trial, StudyPreset, "gpus_per_trial")
        preset = preset.replace(gpus_per_trial=gpus_per_trial)
    if mixed_precision is not None:
        preset = preset.replace(base=preset.base.replace(mixed_precision=mixed_precision))
    if samples is not None:
        if preset.search is None:
            raise ConfigError(f"--samples applies to search presets only; {preset.name!r} is a fixed grid")
        _check_flag("--samples", samples, SearchSettings, "num_samples")
        preset = preset.replace(search=dataclasses.replace(preset.search, num_samples=samples))
    if asha:
        if preset.search is None:
            raise ConfigError(
                f"--asha applies to search presets only; {preset.name!r} repeats seeds for paired "
                "tests, and a trial stopped early is a censored sample"
            )
        preset = preset.replace(search=dataclasses.replace(preset.search, asha=True))
    return preset


def _check_flag(flag: str, value: Any, cls: type, name: str) -> None:
    """A flag's value within the bounds of the field it sets (the same rule as in a study file)."""
    problem = field_bounds(cls, name).problem(value)
    if problem is not None:
        raise ConfigError(f"{flag}: {problem}")


def check_trial_count(preset: StudyPreset, n_seeds: int, where: str = "seeds") -> None:
    """Refuse a grid of more than `MAX_TRIALS` trials from its sizes alone, before any per-seed object exists
    (`MAX_TRIALS` is re-exported here: `study.spec.presets.MAX_TRIALS`)."""
    n_trials = max(1, len(preset.arms)) * n_seeds * len(preset.fractions())
    if n_trials > MAX_TRIALS:
        raise ConfigError(
            f"{where}: {n_seeds} seeds x {len(preset.arms)} arms x {len(preset.fractions())} label "
            f"fraction(s) = {n_trials} trials, over the limit of {MAX_TRIALS} (a study of {n_trials} trials "
            "would train for weeks on one machine); paired tests need tens of seeds, e.g. --seeds 10"
        )


#: `--name`: one folder name; nothing that climbs out of --storage, nests, or hides.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def validate_run_name(name: str) -> None:
    """`--name` must be one safe folder name inside --storage."""
    if not RUN_NAME.fullmatch(name):
        raise ConfigError(
            f"--name: {name!r} is not a run name; use letters, digits, '.', '_' and '-' (one folder inside "
            "--storage, starting with a letter or digit, at most 100 characters)"
        )


def check_local_resources(preset: StudyPreset, address: str | None) -> None:
    """On the embedded Ray (no --address) a trial asking for more cores than the machine has never starts."""
    cores = os.cpu_count() or 1
    if address is None and preset.cpus_per_trial > cores and preset.gpus_per_trial:
        raise ConfigError(
            f"--cpus-per-trial: {preset.name!r} needs {preset.cpus_per_trial:g} cores and "
            f"{preset.gpus_per_trial:g} GPU(s) per trial, but this machine has {cores} cores; run it on a GPU "
            "cluster (--address auto), or lower --cpus-per-trial"
        )
    if address is None and preset.cpus_per_trial > cores:
        raise ConfigError(
            f"--cpus-per-trial: {preset.cpus_per_trial:g} cores per trial, but this machine has {cores}; "
            f"use at most {cores} (or --address a cluster with larger nodes)"
        )


def validate_study(preset: StudyPreset) -> None:
    """Reject a study that cannot run, before Ray starts: one line saying what to change."""
    if not preset.seeds:
        raise ConfigError("seeds: need at least 1 seed")
    check_trial_count(preset, len(preset.seeds))
    # Every bounded field (study, search, trial settings) first: nothing below builds from an unchecked value.
    check_bounds(preset)
    if preset.search is not None:
        check_bounds(preset.search, "search.")
        _validate_search(preset)
    base = preset.base
    check_bounds(base, "trial.")
    if preset.needs_data and base.data_path is None:
        raise ConfigError(
            f"--data: the {preset.name!r} preset needs a real dataset: a folder "
            "DIR/{train,test}/{benign,malignant}/*.jpg or a labels CSV (README, 'Datasets')"
        )
    if base.data_path is not None:
        path = Path(base.data_path)
        if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv")):
            raise ConfigError(f"--data: {base.data_path} is neither a dataset folder nor a .csv labels file")
        if path.is_dir() and (base.data_images is not None or base.data_malignant):
            raise ConfigError(
                f"data: images / malignant apply to a labels CSV; {base.data_path} is a folder, whose "
                "labels come from its benign/ and malignant/ subfolders"
            )
    elif base.data_images is not None or base.data_malignant:
        raise ConfigError('data: images / malignant need a labels CSV; set data.path = "labels.csv"')
    else:
        _validate_synth(base)
    _validate_fractions(preset)
    if preset.needs_gpu and preset.gpus_per_trial < 1:
        raise ConfigError(
            f"--gpus-per-trial: the {preset.name!r} preset needs a GPU per trial (ResNet50 at "
            f"{base.image_size} px would take months on CPUs); run it on a GPU cluster"
        )
    if preset.search is None and not preset.arms:
        raise ConfigError(f"preset {preset.name!r} has no arms to compare")
    configs = (
        preset.trial_configs()
        if preset.search is None
        else [
            base.replace(task=t, pretext_batch_size=b)
            for t in preset.search.tasks
            for b in preset.search.pretext_batch_sizes or (base.pretext_batch_size,)
        ]
    )
    for trial in configs:
        validate_trial(trial)
    if preset.search is None and not any(a["task"] == "none" for a in preset.arms):
        raise ConfigError("arms: the study needs the baseline arm (task 'none') to compare against")
    repeated = repeated_arm(base, preset.arms)
    if repeated is not None:
        first, again = repeated
        raise ConfigError(
            f"arms: arm {again} ({preset.arms[again - 1]['task']}) trains what arm {first} does (the same "
            "settings, task parameters' defaults filled in); give each arm once, or change its settings"
        )


def _validate_search(preset: StudyPreset) -> None:
    """A search: no arms (it picks tasks from `search.tasks`), ordered learning-rate ranges, parameter ranges."""
    search = preset.search
    if preset.arms:
        raise ConfigError(
            "arms: a search picks its tasks from search.tasks and ignores arms; drop the [[arms]] tables, or "
            "run them as a grid without [search]"
        )
    for name in ("lr_range", "pretext_lr_range"):
        low, high = getattr(search, name)
        if low > high:
            raise ConfigError(f"search.{name}: give [low, high] with low <= high (got {[low, high]})")
    _validate_param_ranges(search.param_ranges)


def _validate_param_ranges(ranges: dict[str, Any]) -> None:
    """`[search.param_ranges]`: each a searched task parameter's `[low, high]`, in its registered units."""
    for name, value in ranges.items():
        searched = [n for n in registry.param_names() if registry.param_spec(n).search is not None]
        spec = registry.param_spec(name) if name in searched else None
        if spec is None or spec.search.choices:
            raise ConfigError(
                f"search.param_ranges.{name}: not a task parameter searched over a range; use one of "
                f"{[n for n in searched if not registry.param_spec(n).search.choices]}"
            )
        try:
            dataclasses.replace(spec.search, low=value[0], high=value[1])
        except (TypeError, ValueError, IndexError) as exc:
            unit = "fractions of the image side" if spec.search.relative else spec.type.__name__
            raise ConfigError(f"search.param_ranges.{name}: give [low, high] in {unit} ({exc})") from None


def _validate_synth(base: Any) -> None:
    """The synthetic lesions a study without data generates: counts that give each class enough images, and
    arrays that fit the memory limit (`config.MAX_SYNTH_BYTES`)."""
    problem = synth_size_problem(base.synth_n_train, base.synth_n_test, base.image_size)
    if problem is not None:
        words = {"n_train": "synth_n_train", "n_test": "synth_n_test", "size": "image_size"}
        raise ConfigError(
            "trial.synth_n_train: " + re.sub(r"\b(n_train|n_test|size)\b", lambda m: words[m[1]], problem)
        )
    for split, n in (("train", base.synth_n_train), ("test", base.synth_n_test)):
        if isinstance(n, int) and n >= 1:
            try:
                synth_class_counts(n, split=split)
            except ValueError as exc:
                raise ConfigError(
                    str(exc).removeprefix("write_dataset: ").replace(f"n_{split}", f"synth_n_{split}")
                ) from None


def _validate_fractions(preset: StudyPreset) -> None:
    fractions: Any = preset.label_fractions
    if fractions is None:
        return
    if not fractions:  # each in (0, 1] and none twice: the field's bounds (`check_bounds`)
        raise ConfigError("label_fractions: give a list of fractions, e.g. [0.05, 0.2, 1.0]")
    if preset.base.label_fraction != 1.0:
        raise ConfigError(
            "label_fractions: give the fractions in one place: either label_fractions = [...] or "
            f"[trial] label_fraction = {preset.base.label_fraction}, not both"
        )
    if preset.search is not None:
        raise ConfigError(
            "label_fractions: a search optimises one configuration; run the grid with `study run`"
        )
