"""One resolution step from what a user typed to the study that runs.

Order, each step overriding the last: a shipped preset (`--preset`, or the study file's `preset = ...`), the
study file's keys (`--config`), each `--set key=value`, then the dedicated flags (`--seeds`, `--data`,
`--cpus-per-trial`, ...). `resolve_study` returns one immutable, validated `StudyPreset`; the runner only
consumes it, records it in the run's `study.json` and manifest, and `study resume` runs the recorded one.
Everything here runs before Ray starts and imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from study.config import ConfigError, validate_trial
from study.search_spaces import StudyPreset


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
) -> StudyPreset:
    """The validated study: preset or file, then `--set`, then flags. Raises ConfigError naming the setting."""
    from study import studyfile

    study = studyfile.resolve(preset, config, sets)
    study = apply_flags(study, **dataclasses.asdict(flags))
    validate_study(study)
    return study


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
    """The preset with command-line flags applied (validated afterwards by `validate_study`)."""
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds: need at least 1 seed (got {seeds}); paired tests need >= 7")
        preset = preset.with_seeds(seeds)
    if data is not None:
        preset = preset.replace(base=preset.base.replace(data_path=str(Path(data).expanduser().resolve())))
    if cpus_per_trial is not None:
        if cpus_per_trial <= 0:
            raise ConfigError(f"--cpus-per-trial: must be > 0 (got {cpus_per_trial})")
        threads = max(1, int(cpus_per_trial))
        preset = preset.replace(cpus_per_trial=cpus_per_trial, base=preset.base.replace(threads=threads))
    if gpus_per_trial is not None:
        if gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial: must be >= 0 (got {gpus_per_trial})")
        if 0 < gpus_per_trial < 1:
            # TensorFlow cannot share a GPU between processes reliably (ray issue #10677).
            raise ConfigError(
                "--gpus-per-trial: fractional GPUs fail with TensorFlow; use 0 or a whole number"
            )
        preset = preset.replace(gpus_per_trial=gpus_per_trial)
    if mixed_precision is not None:
        preset = preset.replace(base=preset.base.replace(mixed_precision=mixed_precision))
    if samples is not None:
        if preset.search is None:
            raise ConfigError(f"--samples applies to search presets only; {preset.name!r} is a fixed grid")
        if samples < 1:
            raise ConfigError(f"--samples: must be >= 1 (got {samples})")
        preset = preset.replace(search=dataclasses.replace(preset.search, num_samples=samples))
    if asha:
        if preset.search is None:
            raise ConfigError(
                f"--asha applies to search presets only; {preset.name!r} repeats seeds for paired "
                "tests, and a trial stopped early is a censored sample"
            )
        preset = preset.replace(search=dataclasses.replace(preset.search, asha=True))
    return preset


def validate_study(preset: StudyPreset) -> None:
    """Reject a study that cannot run, before Ray starts: one line saying what to change."""
    if not preset.seeds:
        raise ConfigError("seeds: need at least 1 seed")
    base = preset.base
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
        else [base.replace(task=t) for t in preset.search.tasks]
    )
    for trial in configs:
        validate_trial(trial)
    if preset.search is None and not any(a["task"] == "none" for a in preset.arms):
        raise ConfigError("arms: the study needs the baseline arm (task 'none') to compare against")


def _validate_fractions(preset: StudyPreset) -> None:
    fractions: Any = preset.label_fractions
    if fractions is None:
        return
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(
            f"label_fractions: each must be in (0, 1], e.g. [0.05, 0.2, 1.0] (got {list(fractions)})"
        )
    if len(set(fractions)) != len(fractions):
        raise ConfigError(f"label_fractions: {list(fractions)} lists a fraction twice")
    if preset.base.label_fraction != 1.0:
        raise ConfigError(
            "label_fractions: give the fractions in one place: either label_fractions = [...] or "
            f"[trial] label_fraction = {preset.base.label_fraction}, not both"
        )
    if preset.search is not None:
        raise ConfigError(
            "label_fractions: a search optimises one configuration; run the grid with `study run`"
        )
