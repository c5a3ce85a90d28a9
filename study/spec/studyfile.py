"""Study files and `--set` overrides: a whole study declared in TOML, without editing code.

Resolution order (one way, one place): a shipped preset (the file's `preset = "NAME"`, or `--preset`), then
the file's keys, then each `--set key=value` (dotted keys reach tables: `trial.finetune_epochs=5`), then the
dedicated flags (`--seeds`, `--data`, ...). `study.spec.resolve.resolve_study` runs these steps and validates the
result, one immutable `StudyPreset`, before Ray starts; the runner records it in `study.json` and `study
resume` uses that record, never the file again. This module parses files and `--set` expressions.

Format (`study presets --show demo` prints every shipped preset in it):

    preset = "demo"                 # optional: start from a shipped preset; what follows overrides it
    name = "my-study"               # run names start with it (default: the file's name)
    seeds = 8                       # a count (0..N-1) or a list of seeds
    label_fractions = [0.1, 1.0]    # optional: fine-tune on each fraction of the training labels
    data = "../shared/data/isic9_binary"   # a dataset folder or a labels CSV (relative to where you run)
    cpus_per_trial = 1              # also gpus_per_trial, max_concurrent_trials, max_failures
    backend = "jax"                 # optional: "tensorflow", "jax" or "torch" (default: KERAS_BACKEND's)
    # or, for a labels CSV:  [data]  path = "meta.csv"  images = "imgs/"  malignant = ["mel"]
    [trial]                         # any TrialConfig field (`study.spec.config.TrialConfig`)
    image_size = 64
    finetune_epochs = 30
    [[arms]]                        # the arms compared: a task and that task's parameters
    task = "none"
    [[arms]]
    task = "corruption"
    swap_count = 50

An arm's keys are `task` and the parameters of the registered tasks (`study.tasks.registry.param_names`), typed as
the registry declares them; one the arm leaves out takes its task's default at the trial's image size.
`[search]` may replace a parameter's search range: `[search.param_ranges]` `patch_size = [0.1, 0.3]`.

Unknown keys, wrong types and values the study cannot run with are `ConfigError`s naming the key, the file and
line where it can be found, and the accepted values; a task parameter on an arm whose task does not use it is
an error (not silently dropped).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from study.spec.config import (
    PRETEXT_CACHE,
    ConfigError,
    TrialConfig,
    check_bounds,
    resolved_task_params,
    validate_trial,
)
from study.spec.presets import (
    MAX_TRIALS,
    SearchSettings,
    StudyPreset,
    get_preset,
    repeated_arm,
    upgrade_search_keys,
)
from study.tasks import registry as pretext

# Top-level keys that map one-to-one onto StudyPreset fields.
STUDY_KEYS = ("name", "cpus_per_trial", "gpus_per_trial", "max_concurrent_trials", "max_failures", "backend")
#: A study file is a few kilobytes of TOML; a larger one is not a study file.
MAX_FILE_BYTES = 1 << 20


def arm_keys() -> tuple[str, ...]:
    """What an `[[arms]]` table may hold: `task` and every registered task parameter."""
    return ("task", *pretext.param_names())


class _Source:
    """Where a value came from, for error messages: a file (with its text, to find lines) or `--set`."""

    def __init__(self, label: str, text: str = "") -> None:
        self.label, self.text = label, text

    def where(self, key: str) -> str:
        leaf = re.escape(key.rsplit(".", 1)[-1])
        table = re.escape(key)
        for number, line in enumerate(self.text.splitlines(), start=1):
            if re.match(rf"\s*(\"?){leaf}\1\s*=|\s*\[+\s*{table}\s*\]", line):  # `key =` or `[key]`
                return f"{self.label}:{number}: {key}"
        return f"{self.label}: {key}"


def load_file(path: str | Path) -> tuple[dict[str, Any], _Source]:
    """The parsed TOML of a study file, or `ConfigError` naming the file (and line) and the problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"--config: {p} is not a file; give a study file such as examples/corruption-sweep.toml"
        )
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the study file ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{p}: over {MAX_FILE_BYTES >> 20} MiB, not a study file (a few KB of TOML)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{p}:{line}: not UTF-8 text (byte {exc.start}); a study file is TOML saved as UTF-8"
        ) from None
    try:
        return tomllib.loads(text), _Source(str(p), text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise ConfigError(f"{p}: not a study file (values nested too deep to read)") from None


def parse_set(expr: str) -> tuple[list[str], Any]:
    """`"trial.finetune_epochs=5"` -> (["trial", "finetune_epochs"], 5). The value is read as a TOML value
    (numbers, booleans, quoted strings, [lists]); anything else is taken as a bare string."""
    key, sep, raw = expr.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(
            f"--set {expr!r}: expected KEY=VALUE with a dotted key, e.g. --set trial.finetune_epochs=5"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def resolve(
    preset: str | None = None, config: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()
) -> StudyPreset:
    """The study from a preset name and/or a study file, with `--set` overrides applied in order.

    `preset`: a shipped preset's name (None: the file's `preset`; one of the two is needed: the command's
    default preset is `resolve.resolve_study`'s). Validation of the whole study (arms, image sizes, task
    parameters) is `resolve.validate_study`'s.
    """
    if preset is None and config is None:
        raise TypeError("studyfile.resolve needs a preset name or a study file")
    study: dict[str, Any] = {}
    source = _Source("--set")
    if config is not None:
        study, source = load_file(config)
        named = study.get("preset")
        if preset is not None and named is not None and named != preset:
            raise ConfigError(
                f"{source.where('preset')}: the file starts from preset {named!r} but --preset says "
                f"{preset!r}; give the preset in one place"
            )
        preset = preset or named
    base = get_preset(preset) if preset is not None else None
    if base is None:  # a file that names no preset: every setting not given takes the TrialConfig default
        base = StudyPreset(name=Path(config).stem, base=TrialConfig(), arms=(), seeds=())
    elif config is not None:
        base = base.replace(name=Path(config).stem)
    # A file that names no preset declares the whole study: its [search] table makes it a search.
    result = apply_dict(base, study, source, declares_search=preset is None)
    for expr in sets:
        path, value = parse_set(expr)
        nested: dict[str, Any] = value
        for part in reversed(path):
            nested = {part: nested}
        result = apply_dict(result, nested, _Source("--set"))
    _check_arms(result, source)
    return result


def _check_arms(preset: StudyPreset, source: _Source) -> None:
    """The study's bounded settings, the trial settings, then each arm on them, validated; errors name the
    setting or arm and the file."""
    checks = (
        (check_bounds, preset, ""),
        (validate_trial, preset.base.replace(task="none", seed=0), "trial."),
    )
    for check, obj, prefix in checks:
        try:
            check(obj)
        except ConfigError as exc:
            field, _, rest = str(exc).partition(": ")
            if field.isidentifier():  # the file and line, or `--set`, and the key as written there
                raise ConfigError(f"{source.where(prefix + field)}: {rest}") from None
            raise
    where = source.label if source.text else "the study"
    for i, arm in enumerate(preset.arms, start=1):
        try:
            validate_trial(preset.base.replace(**arm, seed=0))
        except ConfigError as exc:
            raise ConfigError(f"{where}: arm {i} (task {arm.get('task')!r}): {exc}") from None
    repeated = repeated_arm(preset.base, preset.arms)
    if repeated is not None:
        first, again = repeated
        raise ConfigError(
            f"{where}: arm {again} (task {preset.arms[again - 1]['task']!r}) repeats arm {first} (the same "
            "task and parameters, defaults filled in); give each arm once, or change its parameters"
        )


def apply_dict(
    preset: StudyPreset, d: dict[str, Any], source: _Source, declares_search: bool = False
) -> StudyPreset:
    """`preset` with the keys of one study-file dict applied (see the module docstring for the keys).

    A `search` key changes a study that declares a search (the `search` preset, or a file of its own with a
    `[search]` table: `declares_search`); on a grid it is refused, never turning the grid into a search."""
    known = {"preset", "seeds", "data", "trial", "arms", "search", "analysis", "label_fractions", *STUDY_KEYS}
    for key in d:
        if key not in known:
            raise ConfigError(
                f"{source.where(key)}: unknown key; known top-level keys: {', '.join(sorted(known))} "
                "(trial settings go under [trial])"
            )
    changes: dict[str, Any] = {}
    base = preset.base
    if "trial" in d:
        base = _apply_trial(base, _table(d["trial"], "trial", source), source)
    if "data" in d:
        base = _apply_data(base, d["data"], source)
    if "label_fractions" in d:
        value = d["label_fractions"]
        if not isinstance(value, list) or not value:
            raise ConfigError(
                f"{source.where('label_fractions')}: give a list of fractions, e.g. [0.05, 0.2, 1.0]"
            )
        changes["label_fractions"] = tuple(
            sorted(_typed(v, "float", "label_fractions", source) for v in value)
        )
    for key in STUDY_KEYS:
        if key in d:
            ann = next(f.type for f in dataclasses.fields(StudyPreset) if f.name == key)
            changes[key] = _typed(d[key], ann, key, source)
    if "seeds" in d:
        changes["seeds"] = _seeds(d["seeds"], source)
    if "arms" in d:
        changes["arms"] = _arms(d["arms"], source)
    if "search" in d:
        table = upgrade_search_keys(_table(d["search"], "search", source))
        if preset.search is None and not declares_search:
            raise ConfigError(
                f"{source.where('search')}: {preset.name!r} is a grid study, not a search; a search key "
                'applies only to a study that declares one (preset = "search", or --preset search)'
            )
        current = preset.search or SearchSettings()
        changes["search"] = _apply_dataclass(current, table, "search", source)
    if "analysis" in d:
        changes["analysis"] = _apply_dataclass(
            preset.analysis, _table(d["analysis"], "analysis", source), "analysis", source
        )
    return preset.replace(base=base, **changes)


DATA_KEYS = ("path", "images", "malignant")
# Trial settings that are paths on this machine (the dataset's are under [data]).
PATH_FIELDS = ("weights_path", "cache_dir")


def _apply_data(base: TrialConfig, value: Any, source: _Source) -> TrialConfig:
    """`data = "DIR or labels.csv"`, or a `[data]` table with `path`, `images`, `malignant`."""
    table = {"path": value} if isinstance(value, str) else _table(value, "data", source)
    unknown = sorted(set(table) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(
            f"{source.where('data.' + unknown[0])}: unknown data setting; known: {', '.join(DATA_KEYS)}"
        )
    if "path" not in table and base.data_path is None:
        raise ConfigError(f'{source.where("data")}: give the dataset as path = "DIR" or "labels.csv"')
    changes: dict[str, Any] = {}
    if "path" in table:
        # Absolute from here on: trials run in other working directories (Ray workers, cluster nodes).
        path = Path(_typed(table["path"], "str", "data.path", source)).expanduser()
        changes["data_path"] = str(path.resolve())
    if "images" in table:
        changes["data_images"] = str(Path(_typed(table["images"], "str", "data.images", source)).expanduser())
    if "malignant" in table:
        value = table["malignant"]
        if isinstance(value, str):
            value = [value]
        changes["data_malignant"] = _typed(value, "tuple[str, ...]", "data.malignant", source)
    return base.replace(**changes)


def _apply_trial(base: TrialConfig, table: dict[str, Any], source: _Source) -> TrialConfig:
    for key in (*arm_keys(), "task_params"):
        if key in table:
            name = key if key != "task_params" else "each parameter"
            raise ConfigError(
                f"{source.where('trial.' + key)}: {key} belongs to an arm "
                f"([[arms]] task = ..., {name} = ...), since each arm has its own task"
            )
    if "seed" in table:
        raise ConfigError(f"{source.where('trial.seed')}: seeds are a study setting: use top-level seeds = N")
    if table.get("pretext_cache_dir", PRETEXT_CACHE) != PRETEXT_CACHE:  # the run's own (a resolved study's)
        raise ConfigError(
            f"{source.where('trial.pretext_cache_dir')}: set by the run itself (its trials share pretext "
            "weights in RUN_DIR/pretext_cache, which moves with the run); remove it. The cache of decoded "
            "images and synthetic lesions is trial.cache_dir (or STUDY_CACHE_DIR)"
        )
    for key in ("data_path", "data_images", "data_malignant"):
        if key in table:
            raise ConfigError(
                f"{source.where('trial.' + key)}: the dataset is a study setting: use top-level "
                f'data = "DIR" or a [data] table (path, images, malignant)'
            )
    trial = _apply_dataclass(base, table, "trial", source)
    # Absolute from here on, like data.path: trials run in other working directories.
    paths = {k: str(Path(table[k]).expanduser().resolve()) for k in PATH_FIELDS if table.get(k) is not None}
    return trial.replace(**paths)


def _apply_dataclass(obj: Any, table: dict[str, Any], prefix: str, source: _Source) -> Any:
    fields = {f.name: f.type for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(
                f"{source.where(prefix + '.' + key)}: unknown {prefix} setting; "
                f"known: {', '.join(sorted(fields))}"
            )
        changes[key] = _typed(value, fields[key], f"{prefix}.{key}", source)
    return dataclasses.replace(obj, **changes)


def _seeds(value: Any, source: _Source) -> tuple[int, ...]:
    at = source.where("seeds")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        if value < 1:
            raise ConfigError(f"{at}: need at least 1 seed (got {value}); paired tests need >= 7")
        if value > MAX_TRIALS:  # before the seed tuple is built (the grid's own count is checked later)
            raise ConfigError(
                f"{at}: {value} seeds would be over the limit of {MAX_TRIALS} trials; paired tests need "
                "tens of seeds, e.g. seeds = 10"
            )
        return tuple(range(value))
    if isinstance(value, list) and value and all(is_int(v) for v in value):
        if len(value) > MAX_TRIALS:
            raise ConfigError(f"{at}: {len(value)} seeds would be over the limit of {MAX_TRIALS} trials")
        if len(set(value)) != len(value) or min(value) < 0:
            raise ConfigError(f"{at}: seeds must be distinct non-negative integers (got {value})")
        return tuple(value)
    raise ConfigError(f"{at}: give a count (seeds = 8) or a list (seeds = [0, 1, 2]); got {value!r}")


def _arms(value: Any, source: _Source) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, dict) for a in value):
        raise ConfigError(f'{source.where("arms")}: give the arms as [[arms]] tables, each with task = "..."')
    if len(value) > MAX_TRIALS:
        raise ConfigError(
            f"{source.where('arms')}: {len(value)} arms would be over the limit of {MAX_TRIALS} trials"
        )
    arms = []
    keys = arm_keys()
    for i, arm in enumerate(value, start=1):
        unknown = sorted(set(arm) - set(keys))
        if unknown:
            raise ConfigError(
                f"{source.where(unknown[0])}: arm {i} has unknown key(s) {unknown}; an arm holds "
                f"{', '.join(keys)} (other settings go under [trial])"
            )
        if "task" not in arm:
            raise ConfigError(f'{source.label}: arm {i} has no task; add task = "none" or a pretext task')
        typed = {"task": _typed(arm["task"], "str", "task", source)}
        for k, v in arm.items():
            if k != "task":
                typed[k] = _typed(v, pretext.param_spec(k).type.__name__, k, source)
        arms.append(typed)
    return tuple(arms)


def _table(value: Any, key: str, source: _Source) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source.where(key)}: must be a table ([{key}] with key = value lines)")
    return value


def _typed(value: Any, annotation: str, key: str, source: _Source) -> Any:
    """`value` converted to the field type named by `annotation` (a dataclass annotation string)."""
    ann = annotation.replace(" | None", "").replace("None | ", "").strip()
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if ann == "int" and is_int:
        return value
    if ann == "float" and (is_int or isinstance(value, float)):
        return float(value)
    if ann == "bool" and isinstance(value, bool):
        return value
    if ann == "str" and isinstance(value, str):
        return value
    m = re.fullmatch(r"tuple\[(\w+), \.\.\.\]|tuple\[(\w+), (\w+)\]", ann)
    if m and isinstance(value, list):
        inner = [m.group(1)] * len(value) if m.group(1) else [m.group(2), m.group(3)]
        if len(inner) == len(value):
            return tuple(_typed(v, t, key, source) for v, t in zip(value, inner))
    m = re.fullmatch(r"dict\[str, (.+)\]", ann)
    if m and isinstance(value, dict):
        return {k: _typed(v, m.group(1), f"{key}.{k}", source) for k, v in value.items()}
    wanted = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a quoted string",
        "dict[str, tuple[float, float]]": "a table of [low, high] ranges",
    }
    raise ConfigError(
        f"{source.where(key)}: expected {wanted.get(ann, ann.replace('tuple', 'a list'))}, got {value!r}"
    )


# ------------------------------------------------------------------------------------------- writing
def to_toml(preset: StudyPreset, shipped: str | None = None) -> str:
    """`preset` as a study file with every value spelled out, such that `resolve(config=that file)` gives
    back the same study. `shipped`: the shipped preset it starts from (`preset = ...` line), which keeps the
    preset's own checks (`needs_gpu`, `needs_data`). None values are left out (TOML has no null)."""
    lines = [f"# study {preset.name!r}: copy, edit, then `study run --config FILE`"]
    if shipped is not None:
        lines.append(f"preset = {_value(shipped)}")
    lines.append(f"name = {_value(preset.name)}")
    lines.append(f"seeds = {_value(list(preset.seeds))}")
    for key in STUDY_KEYS[1:]:
        value = getattr(preset, key)
        if value is not None:
            lines.append(f"{key} = {_value(value)}")
    if preset.label_fractions is not None:
        lines.append(f"label_fractions = {_value(list(preset.label_fractions))}")
    base = preset.base
    if base.data_path is not None:
        lines += ["", "[data]", f"path = {_value(base.data_path)}"]
        if base.data_images is not None:
            lines.append(f"images = {_value(base.data_images)}")
        if base.data_malignant:
            lines.append(f"malignant = {_value(list(base.data_malignant))}")
    lines += ["", "[trial]"]
    # Task parameters belong to arms: a preset's base holds none (`task_params` is empty).
    skip = ("task", "seed", "task_params", "data_path", "data_images", "data_malignant")
    for key, value in base.to_dict().items():
        if value is not None and key not in skip:
            lines.append(f"{key} = {_value(value)}")
    lines += [
        "",
        '[analysis]  # the primary analysis, declared before the run (README, "What a verdict means")',
    ]
    lines += [f"{k} = {_value(v)}" for k, v in dataclasses.asdict(preset.analysis).items() if v is not None]
    if preset.search is not None:
        lines += ["", "[search]"]
        lines += [f"{k} = {_value(v)}" for k, v in dataclasses.asdict(preset.search).items()]
        lines += _range_comments(preset.search)
    for arm in preset.arms:
        lines += ["", "[[arms]]"] + [f"{k} = {_value(v)}" for k, v in arm.items() if v is not None]
        lines += _default_comments(base, arm)
    return "\n".join(lines) + "\n"


def _range_comments(search: SearchSettings) -> list[str]:
    """`# patch_size in [0.15, 0.5] ...` for each searched parameter whose registered range is used."""
    lines = []
    for task in (pretext.TASKS[t] for t in search.tasks if t in pretext.TASKS):
        for p in task.params:
            if p.search is None or p.search.choices or p.name in search.param_ranges:
                continue
            unit = " (fractions of the image side)" if p.search.relative else ""
            scale = ", log scale" if p.search.log else ""
            lines.append(
                f"# {p.name} in {_value([p.search.low, p.search.high])}{unit}{scale}: registered range; "
                "param_ranges replaces it"
            )
    return lines


def _default_comments(base: TrialConfig, arm: dict[str, Any]) -> list[str]:
    """`# patch_size = 11  (default at 32 px)` for each parameter the arm leaves to its task's default."""
    if arm.get("task") not in pretext.TASKS:
        return []
    trial = base.replace(**arm)
    given = {k for k, v in arm.items() if v is not None}
    return [
        f"# {k} = {_value(v)}  (default at {trial.image_size} px)"
        for k, v in resolved_task_params(trial).items()
        if k not in given
    ]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    return repr(v)
