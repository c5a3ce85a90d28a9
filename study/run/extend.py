"""`study extend RUN --seeds N`: more seeds for a finished study, as one more look at its primary comparisons.

The run's first look is the study as `study run` ran it (study.json's seeds, every arm). Each extension is a
new Ray Tune experiment in the same run folder (Tune restores the newest, so `study resume` continues an
extension a kill interrupted), running only the new seeds and only the arms whose primary comparison is still
open (plus the baseline): finished trials, their rows in results.csv and their pretext phases are not touched.
What each look ran is recorded before its trials start in `looks.json` (a top-level file, signed with Tune's
state like study.json: `study.run.tune_state.WRITTEN_ONCE`); a look is finished once results.csv holds its
seeds. The verdicts over the looks are `study.looks`'; the report lists the looks.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import pandas as pd

import study
from study import analysis as A
from study.io.files import UnsafeFileError, read_json, write_text_replacing
from study.report.results_table import load_run
from study.report.sequential import RunLooks, not_run_by_design, run_looks
from study.run.results import varied_params
from study.run.rundir import LOOKS_FILE, versions
from study.spec.config import ConfigError
from study.spec.presets import MAX_TRIALS, StudyPreset, arm_name

MAX_LOOKS_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Look:
    """One extension: `seeds` the seeds it adds, `arms` the indices (into the study's arms) it runs."""

    seeds: tuple[int, ...]
    arms: tuple[int, ...]
    planned: bool
    started: str
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "seeds": list(self.seeds), "arms": list(self.arms)}


def read_looks(local: Path, preset: StudyPreset) -> list[Look]:
    """The extensions recorded in `local/looks.json` ([] when the run was never extended), validated against
    the study: seeds new and in bounds, arm indices of its arms."""
    path = local / LOOKS_FILE
    if not path.exists() and not path.is_symlink():
        return []
    try:
        raw = read_json(path, limit=MAX_LOOKS_BYTES)
        looks = [
            Look(
                seeds=tuple(int(s) for s in x["seeds"]),
                arms=tuple(int(a) for a in x["arms"]),
                planned=bool(x["planned"]),
                started=str(x["started"]),
                version=str(x["version"]),
            )
            for x in raw["looks"]
        ]
    except (OSError, UnsafeFileError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not the run's record of its looks ({exc})") from None
    seen = set(preset.seeds)
    for look in looks:
        if not look.seeds or seen & set(look.seeds) or min(look.seeds) < 0:
            raise ConfigError(f"{path}: a look adds no seeds, or seeds another look ran: {list(look.seeds)}")
        if not look.arms or not all(0 <= a < len(preset.arms) for a in look.arms):
            raise ConfigError(f"{path}: a look names arms the study does not have: {list(look.arms)}")
        seen |= set(look.seeds)
    return looks


def write_looks(local: Path, looks: list[Look]) -> None:
    write_text_replacing(
        local / LOOKS_FILE, json.dumps({"version": 1, "looks": [x.to_dict() for x in looks]}, indent=1)
    )


def all_seeds(preset: StudyPreset, looks: list[Look]) -> tuple[int, ...]:
    return tuple(preset.seeds) + tuple(s for look in looks for s in look.seeds)


def full_preset(preset: StudyPreset, looks: list[Look]) -> StudyPreset:
    """The study with every seed of every look (what results.csv covers once the looks finished)."""
    return dataclasses.replace(preset, seeds=all_seeds(preset, looks))


def look_preset(preset: StudyPreset, look: Look) -> StudyPreset:
    """The trials of one extension: its seeds, its arms."""
    return dataclasses.replace(preset, seeds=look.seeds, arms=tuple(preset.arms[a] for a in look.arms))


def pending_look(local: Path, preset: StudyPreset, looks: list[Look]) -> Look | None:
    """The last extension when results.csv does not hold its seeds yet (its trials were interrupted)."""
    if not looks:
        return None
    try:
        seeds = set(pd.read_csv(local / "results.csv", usecols=["seed"])["seed"].astype(int))
    except (OSError, ValueError, KeyError):
        seeds = set()
    return None if set(looks[-1].seeds) <= seeds else looks[-1]


def look_sizes(preset: StudyPreset, looks: list[Look]) -> list[int]:
    """Seeds analysed at each look: the study's, then after each extension."""
    sizes = [len(preset.seeds)]
    for look in looks:
        sizes.append(sizes[-1] + len(look.seeds))
    return sizes


class AllDecided(ConfigError):
    """Every primary comparison is decided: more seeds would change no verdict."""


def look_targets(
    preset: StudyPreset, looks: list[Look], seeds: int | None, per_look: int | None
) -> list[int]:
    """Seeds in all after each look of one `study extend`: `[seeds]`, or steps of `per_look` up to `seeds`."""
    if per_look is None or seeds is None:
        return [seeds]
    have = look_sizes(preset, looks)[-1]
    if per_look < 1:
        raise ConfigError(
            f"--seeds-per-look {per_look}: a look adds at least one seed, e.g. --seeds-per-look 4"
        )
    return [*range(have + per_look, seeds, per_look), seeds] if seeds > have else [seeds]


def plan_look(local: Path, preset: StudyPreset, looks: list[Look], seeds: int | None) -> Look:
    """The next look: `seeds` in all (default: the next declared look), checked against what ran and against
    the declared looks; its arms are those whose primary comparison is still open, and the baseline."""
    have = look_sizes(preset, looks)[-1]
    declared = tuple(preset.analysis.looks)
    if seeds is None:
        later = [n for n in declared if n > have]
        if not later:
            raise ConfigError(
                "--seeds: required (the study declares no looks still ahead: "
                f"{list(declared) or 'none'}); e.g. --seeds {2 * have}"
            )
        seeds = later[0]
    per_seed = len(preset.arms) * len(preset.fractions())
    if (seeds - have) * per_seed > MAX_TRIALS:
        raise ConfigError(
            f"--seeds {seeds}: {(seeds - have) * per_seed:,} new trials; a look runs at most {MAX_TRIALS:,}"
        )
    if seeds <= have:
        raise ConfigError(
            f"--seeds {seeds}: the run already has {have} seeds; ask for more, e.g. --seeds {2 * have}"
        )
    if declared:
        if have >= declared[-1]:
            raise ConfigError(
                f"--seeds {seeds}: the study's declared looks {list(declared)} are exhausted (it has {have} "
                "seeds); its verdicts are final. Start a new study to ask again"
            )
        if seeds not in declared:
            nxt = min(n for n in declared if n > have)
            raise ConfigError(
                f"--seeds {seeds}: the study declares its looks at {list(declared)} seeds; the next is --seeds {nxt}"
            )
    open_arms = _open_arms(local, preset, looks)
    first = max(all_seeds(preset, looks)) + 1
    return Look(
        seeds=tuple(range(first, first + seeds - have)),
        arms=open_arms,
        planned=bool(declared),
        started=_dt.datetime.now(_dt.timezone.utc).isoformat(),
        version=study.__version__,
    )


def _open_arms(local: Path, preset: StudyPreset, looks: list[Look]) -> tuple[int, ...]:
    """Indices of the arms the next look runs: the baseline and every arm whose primary comparison is still
    open after the looks so far (`study.report.sequential`, on results.csv); a decided comparison is closed and
    its arm runs no more seeds. Every arm while the run has no primary comparison to judge."""
    state = looks_state(local, preset, looks)
    if state is None:
        return tuple(range(len(preset.arms)))
    if not state.any_open:
        decided = ", ".join(f"{a}: {v}" for a, v in zip(state.arms, state.sequential.verdict))
        raise AllDecided(
            f"{local}: every primary comparison is decided ({decided}); more seeds would change no verdict"
        )
    closed = {a for a, is_open in zip(state.arms, state.sequential.open) if not is_open}
    names = arm_names(preset)
    return tuple(
        i for i, arm in enumerate(preset.arms) if arm.get("task") == "none" or names[i] not in closed
    )


def arm_names(preset: StudyPreset) -> list[str]:
    """The study's arms as results.csv names them."""
    varied = varied_params(preset)
    return [arm_name(arm, varied) for arm in preset.arms]


def not_run(preset: StudyPreset, looks: list[Look]) -> dict[str, set[int]]:
    """Arm name -> the seeds of later looks it did not run (its comparison was closed), as the report reads
    them from the manifest (`report.sequential.not_run_by_design`)."""
    names = arm_names(preset)
    ran = [{"arms": names, "added": list(preset.seeds)}]
    ran += [{"arms": [names[a] for a in x.arms], "added": list(x.seeds)} for x in looks]
    return not_run_by_design({"looks": ran})


def looks_state(local: Path, preset: StudyPreset, looks: list[Look]) -> RunLooks | None:
    """The sequential verdicts of the run's results over its looks so far (None without primary comparisons)."""
    df = load_run(local)
    try:
        pairing = A.check_pairing(df, preset.analysis.metric, not_run(preset, looks))
    except A.AnalysisError:
        return None
    return run_looks(df, preset.analysis, pairing, look_sizes(preset, looks))


def check_same_code(local: Path, run_uri: str, backend: str | None = None) -> None:
    """The run's trials ran on this code version and backend (the manifest's record; `backend`: the one the
    new trials run on, the study's; None: this process's): a look on other code would compare numbers that
    differ for reasons other than the arms."""
    try:
        manifest = read_json(local / "manifest.json")
        ran = manifest["versions"]
    except (OSError, UnsafeFileError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{run_uri}/manifest.json: cannot tell which code ran the study ({exc}); `study resume` it first"
        ) from None
    now = versions(backend)
    for key in ("melanoma-ssl-study", "keras_backend"):
        if ran.get(key) != now.get(key):
            raise ConfigError(
                f"{run_uri}: its trials ran on {key} {ran.get(key)!r}, this is {now.get(key)!r}; more seeds "
                "must run on the same code to be paired with the first (install that version, or start a new study)"
            )


def check_same_data(saved: dict[str, Any], check: Any, run_uri: str) -> None:
    ran = (saved.get("data_check") or {}).get("fingerprint")
    now = check.to_dict().get("fingerprint")
    if ran != now:
        raise ConfigError(
            f"{run_uri}: the study ran on data with fingerprint {ran}, the data there now has {now}; more seeds "
            "must see the same data (restore it, or start a new study)"
        )


def manifest_looks(local: Path, preset: StudyPreset, saved: dict[str, Any], looks: list[Look]) -> list[dict]:
    """The manifest's record of the looks: per look its seeds in all, the seeds it added, its arms, whether it
    was declared, when it started and finished, and the code version; the last look finishes now."""
    try:
        manifest = read_json(local / "manifest.json")
        before = manifest.get("looks") or [{"finished": manifest.get("finished")}]
    except (OSError, UnsafeFileError, AttributeError):
        before = []
    declared = bool(preset.analysis.looks)
    first = Look(tuple(preset.seeds), tuple(range(len(preset.arms))), declared, str(saved.get("started")), "")
    sizes, names = look_sizes(preset, looks), arm_names(preset)
    out = []
    for k, look in enumerate([first, *looks]):
        earlier = before[k] if k < len(before) and isinstance(before[k], dict) else {}
        finished = earlier.get("finished") if k < len(looks) else None
        out.append(
            {
                "look": k + 1,
                "seeds": sizes[k],
                "added": list(look.seeds),
                "arms": [names[a] for a in look.arms],
                "planned": look.planned,
                "started": look.started,
                "finished": finished or _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "version": look.version or earlier.get("version") or study.__version__,
            }
        )
    return out
