"""Configuration objects: one trial (`TrialConfig`), its validation, and which phase each setting affects.

A trial config travels through Ray Tune as a flat dict (`TrialConfig.to_dict`), so every field is a plain
JSON value. Validation happens on the driver, before any trial starts (`validate_trial`).

Every field is tagged with the phases whose results it changes (`dataclasses.field(metadata=...)`, see
`PHASES`), and the cache and resume keys are computed from the tags, never from lists written by hand:
`pretext_key` (the shared pretext cache, `study.trainables`) holds every `PRETEXT` field, the compiled-model
cache key (`study.train.models.model_key`) every `MODEL` field, and a fine-tune checkpoint is resumed only under
the same `PRETEXT` and `FINETUNE` fields (`study.train.state`). A new field without a tag fails at import and in
tests/tasks/test_registry.py, so a setting that changes pretext training cannot reuse stale cached weights (a new
`PRETEXT` field enters every pretext key, so caches written before it are trained again, never reused).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from study.tasks import registry as task_registry

ENCODERS = ("small", "resnet50")
#: Output strides each encoder can be built with (`models.build_encoder`); ResNet50's is fixed by Keras.
ENCODER_STRIDES = {"small": (8, 16, 32), "resnet50": (32,)}
WEIGHTS = ("random", "imagenet")

#: Read when the dataset is loaded; every key holds the dataset's fingerprint, which covers these fields.
DATA = "data"
#: Changes what the pretext phase trains or scores (part of the pretext cache key).
PRETEXT = "pretext"
#: Changes what the fine-tune phase trains or reports, its early-stopping replay included.
FINETUNE = "finetune"
#: Changes a compiled model's traced graph (part of the model cache key, with the head and loss).
MODEL = "model"
#: Where and how a trial runs, without changing any number it reports.
EXECUTION = "execution"
PHASES = (DATA, PRETEXT, FINETUNE, MODEL, EXECUTION)


#: The run's pretext cache, relative to the run: trials read it against the run they belong to, so a moved
#: run keeps its cache (`study.data.trial_source.pretext_root`); `resolve.finalize_study` sets it.
PRETEXT_CACHE = "pretext_cache"


class ConfigError(ValueError):
    """A config value the study cannot run with; the message names the field and the fix."""


class TaskParams(Mapping):
    """The task parameters an arm sets (`{"patch_size": 11}`): an immutable, hashable mapping, name-sorted;
    None values are dropped (unset: the task's default at the trial's image size, `resolved_task_params`)."""

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items = {k: v for k, v in sorted(dict(items or {}).items()) if v is not None}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"TaskParams({self._items!r})"


#: Sane maxima of the numeric settings (a value past them is a typo, or would exhaust memory or time before
#: anything useful ran): the image side (the paper's is 224), epochs, batch sizes, encoder stage widths
#: (ResNet50's widest is 2048), seeds (NumPy's legacy seeding, which Keras' reseeding uses, takes < 2**32).
MAX_IMAGE_SIZE = 1024
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096
MAX_WIDTH = 2048
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024
#: Synthetic lesions of a study without data: at most this many per split, and at most this many bytes of
#: decoded arrays for both splits together (`synth_array_bytes`).
MAX_SYNTH_IMAGES = 100_000
MAX_SYNTH_BYTES = 4 * 2**30


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting may take, declared once in its field's metadata (`setting(...,
    bounds=...)`, `bounded(...)`) and checked by `check_bounds` in the one resolution step, before anything
    is built from the value.

    `low` / `high`: inclusive limits, exclusive where `low_open` / `high_open`; every value must also be
    finite. `integer`: a Python int (never a bool); `whole`: a number equal to a whole number (resources that
    Ray counts as floats). `optional`: None is allowed. A tuple-valued field has each item checked, and
    `distinct` refuses an item given twice (`item` names one in that message: "a patience"). `rule`: the
    message's wording where the default ("must be an integer in [1, 10000]") would be unclear; `hint`: why,
    appended to the message.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    whole: bool = False
    optional: bool = False
    distinct: bool = False
    item: str = "a value"
    rule: str = ""
    hint: str = ""

    def describe(self) -> str:
        """What a valid value is, in words: `must be an integer in [1, 10000]`."""
        if self.rule:
            return self.rule
        kind = "an integer " if self.integer else "a whole number " if self.whole else ""
        low = None if self.low is None else ("(" if self.low_open else "[") + _num(self.low)
        high = None if self.high is None else _num(self.high) + (")" if self.high_open else "]")
        if low is not None and high is not None:
            return f"must be {kind}in {low}, {high}"
        if low is not None:
            return f"must be {kind or 'a finite number '}{'>' if self.low_open else '>='} {_num(self.low)}"
        if high is not None:
            return f"must be {kind or 'a finite number '}{'<' if self.high_open else '<='} {_num(self.high)}"
        return f"must be {kind or 'a finite number'}".rstrip()

    def accepts(self, value: Any) -> bool:
        """Whether one value (an item, for a tuple-valued field) lies within these bounds."""
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.whole and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or not (value >= self.high if self.high_open else value > self.high)

    def problem(self, value: Any) -> str | None:
        """None when `value` is valid, else what is wrong with it, in one line (without the field's name)."""
        why = f"; {self.hint}" if self.hint else ""
        if isinstance(value, (tuple, list)):
            for item in value:
                if not self.accepts(item):
                    return f"each {self.describe()} (got {item!r} in {list(value)}){why}"
            seen: set[Any] = set()
            for item in value if self.distinct else ():
                if item in seen:
                    return f"{list(value)} lists {self.item} twice ({item!r}); give each once{why}"
                seen.add(item)
            return None
        return None if self.accepts(value) else f"{self.describe()} (got {value!r}){why}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def bounded(default: Any, bounds: Bounds, **field_kw: Any) -> Any:
    """A dataclass field (of a study, its search or analysis) whose values `bounds` limits."""
    return dataclasses.field(default=default, metadata={"bounds": bounds}, **field_kw)


def check_bounds(obj: Any, prefix: str = "") -> None:
    """`ConfigError` naming (`prefix` + name) the first field of the dataclass instance `obj` whose value lies
    outside the `Bounds` in its metadata."""
    for f in dataclasses.fields(obj):
        bounds = f.metadata.get("bounds")
        problem = bounds.problem(getattr(obj, f.name)) if bounds is not None else None
        if problem is not None:
            raise ConfigError(f"{prefix}{f.name}: {problem}")


def field_bounds(cls: type, name: str) -> Bounds:
    """The `Bounds` of field `name` of the dataclass `cls` (for a flag that sets it)."""
    return next(f.metadata["bounds"] for f in dataclasses.fields(cls) if f.name == name)


def setting(default: Any, *phases: str, key: str | None = None, bounds: Bounds | None = None) -> Any:
    """A `TrialConfig` field affecting `phases`; `key`: its name in the pretext cache key where that differs
    (names kept from before the key was derived from the tags, so existing caches stay valid); `bounds`: the
    values a numeric field may take (`check_bounds`, run by `validate_trial`)."""
    metadata = {"phases": frozenset(phases), "key": key, **({"bounds": bounds} if bounds else {})}
    return dataclasses.field(default=default, metadata=metadata)


def _count(low: int, high: int, **kw: Any) -> Bounds:
    return Bounds(low=low, high=high, integer=True, **kw)


_EPOCHS = _count(1, MAX_EPOCHS)
_LR = Bounds(low=0, high=1, low_open=True, hint="a learning rate of Adam")
_BATCH = _count(1, MAX_BATCH_SIZE)
_SEED = _count(0, MAX_SEED)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one two-stage trial needs. Units: sizes in pixels, lr per Adam step.

    `task_params`: the parameters of `task` that its arm sets (`study.tasks.registry.Param`); a parameter left out
    takes the task's default at `image_size` when the trial runs (`resolved_task_params`), so an image size
    changed after the arm was written scales the defaults with it. One mapping rather than a field per
    parameter, so a newly registered task brings its parameters without a change here; the flat keys of
    arms, study files, Tune configs and the `study.json` of earlier runs (`patch_size = 11`) are mapped into
    it by `from_dict` and `replace`, and results.csv keeps one column per registered parameter.
    `patiences` lists the early-stopping regimes replayed from one fine-tune run: 0 means no early stopping.
    `threads` is TensorFlow's intra-op thread count (recorded, because weights differ between 1 and 2 threads).
    Each field's metadata names the phases it affects (module docstring).
    """

    task: str = setting("none", PRETEXT)
    seed: int = setting(0, PRETEXT, FINETUNE, bounds=_SEED)
    task_params: TaskParams = setting(TaskParams(), PRETEXT, key="params")
    # data
    # None: synthetic lesions (see synth_*); a folder or a labels CSV
    data_path: str | None = setting(None, DATA)
    # Labels CSV only: the images folder (default: next to the CSV) and, for a diagnosis column (`dx`,
    # `diagnosis`), the classes counted as malignant (e.g. ("mel",)); see study.data.DataSource.
    data_images: str | None = setting(None, DATA)
    data_malignant: tuple[str, ...] = setting((), DATA)
    image_size: int = setting(
        64, DATA, PRETEXT, FINETUNE, MODEL, bounds=_count(32, MAX_IMAGE_SIZE, hint="the paper's is 224 px")
    )
    val_fraction: float = setting(
        0.2, PRETEXT, FINETUNE, bounds=Bounds(0, 1, True, True, hint="the paper uses 0.2")
    )
    label_fraction: float = setting(1.0, FINETUNE, bounds=Bounds(0, 1, low_open=True))
    synth_n_train: int = setting(600, DATA, bounds=_count(1, MAX_SYNTH_IMAGES))
    synth_n_test: int = setting(200, DATA, bounds=_count(1, MAX_SYNTH_IMAGES))
    synth_seed: int = setting(1234, DATA, bounds=_SEED)
    cache_dir: str | None = setting(None, EXECUTION)
    # model
    encoder: str = setting("small", PRETEXT, FINETUNE, MODEL)
    encoder_widths: tuple[int, ...] = setting(
        (16, 32, 64, 128), PRETEXT, FINETUNE, MODEL, bounds=_count(1, MAX_WIDTH, hint="filters per stage")
    )
    # Small encoder only: total downsampling (8, 16 or 32) and BatchNorm momentum (see models.build_encoder).
    encoder_stride: int = setting(32, PRETEXT, FINETUNE, MODEL, bounds=_count(8, 32))
    bn_momentum: float = setting(
        0.99, PRETEXT, FINETUNE, MODEL, bounds=Bounds(0, 1, high_open=True, hint="Keras' default is 0.99")
    )
    weights: str = setting("random", PRETEXT, FINETUNE)
    weights_path: str | None = setting(None, PRETEXT, FINETUNE)
    # pretext phase
    pretext_epochs: int = setting(5, PRETEXT, key="epochs", bounds=_EPOCHS)
    pretext_lr: float = setting(1e-3, PRETEXT, key="lr", bounds=_LR)
    pretext_batch_size: int = setting(32, PRETEXT, key="batch_size", bounds=_BATCH)
    pretext_patience: int | None = setting(
        None, PRETEXT, key="patience", bounds=_count(1, MAX_EPOCHS, optional=True, hint="or leave it unset")
    )
    # fine-tune phase
    finetune_epochs: int = setting(15, FINETUNE, bounds=_EPOCHS)
    lr: float = setting(1e-3, FINETUNE, bounds=_LR)
    batch_size: int = setting(32, FINETUNE, bounds=_BATCH)
    # Each regime once: a repeated one would be two results.csv rows of one measurement.
    patiences: tuple[int, ...] = setting(
        (0, 3, 10),
        FINETUNE,
        bounds=_count(0, MAX_EPOCHS, distinct=True, item="a patience", hint="0 means no early stopping"),
    )
    start_from_epoch: int = setting(0, FINETUNE, bounds=_count(0, MAX_EPOCHS))
    restore_best_weights: bool = setting(False, FINETUNE)
    # execution
    # Weights differ between 1 and 2 TensorFlow threads, and mixed precision changes every number.
    threads: int = setting(1, PRETEXT, FINETUNE, bounds=_count(1, MAX_THREADS))
    mixed_precision: bool = setting(False, PRETEXT, FINETUNE, MODEL)
    # Where pretext weights are shared between trials (the run's own, set by `resolve.finalize_study`).
    pretext_cache_dir: str | None = setting(None, EXECUTION)
    checkpoint_every: int = setting(1, EXECUTION, bounds=_EPOCHS)  # fine-tune epochs between checkpoints
    # Fine-tune epochs between intermediate results (each is a ~10 ms round trip to Tune's driver); a result
    # also comes with every checkpoint and the last epoch, and the final one holds every epoch's history.
    # ASHA decides on every epoch's: resolution sets 1 for an ASHA search (`resolve.finalize_study`).
    report_every: int = setting(1, EXECUTION, bounds=_EPOCHS)
    # False: the trial trains its own pretext instead of sharing it (the naive study of bench/study_cost.py).
    share_pretext: bool = setting(True, EXECUTION)
    # True (with exactly one patience > 0): stop fine-tuning where Keras' EarlyStopping would, saving the
    # remaining epochs; the other regimes then cannot be replayed from this run.
    early_stop_training: bool = setting(False, FINETUNE)

    def __post_init__(self) -> None:
        if not isinstance(self.task_params, TaskParams):
            object.__setattr__(self, "task_params", TaskParams(self.task_params))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["task_params"] = dict(self.task_params)
        d["encoder_widths"] = list(self.encoder_widths)
        d["patiences"] = list(self.patiences)
        d["data_malignant"] = list(self.data_malignant)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        """From `to_dict`'s output or a flat dict (a Tune config, an arm, the `study.json` of earlier runs):
        a registered task parameter's key (`patch_size`) goes into `task_params`."""
        kw, params = _split_task_params(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ConfigError(
                f"unknown trial config field(s) {unknown}; known fields: {sorted(names)} and the task "
                f"parameters {sorted(_param_names())}"
            )
        if params:
            kw["task_params"] = {**dict(kw.get("task_params") or {}), **params}
        if "encoder_widths" in kw and kw["encoder_widths"] is not None:
            kw["encoder_widths"] = tuple(int(w) for w in kw["encoder_widths"])
        if "patiences" in kw and kw["patiences"] is not None:
            kw["patiences"] = tuple(int(p) for p in kw["patiences"])
        if "data_malignant" in kw and kw["data_malignant"] is not None:
            kw["data_malignant"] = tuple(str(c) for c in kw["data_malignant"])
        return cls(**kw)

    def replace(self, **changes: Any) -> "TrialConfig":
        """`dataclasses.replace`, also taking task parameters by name (`replace(**arm)`, `patch_size=11`);
        a parameter set to None goes back to its default."""
        kw, params = _split_task_params(changes)
        if params:
            merged = {**dict(kw.get("task_params", self.task_params)), **params}
            kw["task_params"] = {k: v for k, v in merged.items() if v is not None}
        return dataclasses.replace(self, **kw)


# Grid dimensions of a Tune config whose values are dicts of TrialConfig fields (`search_spaces.grid_space`).
GRID_TABLES = ("arm", "subset")


def trial_config_from(config: dict[str, Any]) -> TrialConfig:
    """Flatten a Tune config (fixed settings + `arm` / `subset` dicts, or flat search suggestions)."""
    flat = {k: v for k, v in config.items() if k not in GRID_TABLES}
    for table in GRID_TABLES:
        flat.update(config.get(table) or {})
    return TrialConfig.from_dict(flat)


def _param_names() -> tuple[str, ...]:
    return task_registry.param_names()


def _split_task_params(d: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`d` without the registered task-parameter keys, those keys' values)."""
    names = set(_param_names())
    return {k: v for k, v in d.items() if k not in names}, {k: v for k, v in d.items() if k in names}


def phases_of(f: dataclasses.Field) -> frozenset[str]:
    """The phases a config field affects; `TypeError` for a field without (or with an unknown) tag."""
    phases = f.metadata.get("phases")
    if not phases or not set(phases) <= set(PHASES):
        raise TypeError(
            f"TrialConfig field {f.name!r} has no phase tag; declare it with setting(default, *phases) naming "
            f"the phases its value changes, from {PHASES}, so the cache and resume keys include it where needed"
        )
    return phases


def fields_of(*phases: str, cls: type = TrialConfig) -> tuple[str, ...]:
    """Names of the fields of `cls` (a `TrialConfig` or a subclass) that affect any of `phases`."""
    return tuple(f.name for f in dataclasses.fields(cls) if phases_of(f) & set(phases))


def phase_values(trial: TrialConfig, *phases: str, keys: bool = False) -> dict[str, Any]:
    """The JSON values of `trial`'s fields that affect any of `phases`, by field name (`keys`: by the name in
    the pretext cache key). Task parameters are resolved (defaults filled in), so an arm that spells out a
    default and one that leaves it out are the same trial."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(trial):
        if not phases_of(f) & set(phases):
            continue
        value = getattr(trial, f.name)
        if f.name == "task_params":
            value = resolved_task_params(trial)
        elif isinstance(value, tuple):
            value = list(value)
        name = (f.metadata["key"] or f.name) if keys else f.name
        if name in out:
            raise TypeError(f"TrialConfig fields {name!r} and {f.name!r} share the key name {name!r}")
        out[name] = value
    return out


fields_of(*PHASES)  # every field is tagged: fail at import, not with a stale cache
# Arms and study files give task parameters and fields by name: no task parameter may take a field's.
task_registry.reserve_settings((f.name for f in dataclasses.fields(TrialConfig)), "TrialConfig")


def regime_name(patience: int) -> str:
    """`0 -> "none"`, `3 -> "patience3"`: the label of an early-stopping regime in tables."""
    return "none" if patience == 0 else f"patience{patience}"


def validate_trial(trial: TrialConfig) -> None:
    """Raise `ConfigError` with one line saying what to change when `trial` cannot run.

    Runs on the driver before any trial starts; imports no TensorFlow.
    """

    def bad(msg: str) -> None:
        raise ConfigError(msg)

    check_bounds(trial)  # every numeric field within the bounds its metadata declares, first
    if trial.task != "none" and trial.task not in task_registry.TASKS:
        tasks = ", ".join(task_registry.TASKS)
        bad(f"task: unknown task {trial.task!r}; choose 'none' (baseline) or one of {tasks}")
    _validate_encoder(trial, bad)
    if not trial.patiences:
        bad("patiences: give at least one early-stopping regime (0 = no early stopping)")
    if trial.early_stop_training and (len(trial.patiences) != 1 or trial.patiences[0] == 0):
        bad(
            f"early_stop_training: needs exactly one patience > 0 (got patiences={list(trial.patiences)}); "
            "replaying several regimes needs the full run"
        )
    if len(trial.encoder_widths) != 4:
        bad(f"encoder_widths: need 4 positive stage widths (got {list(trial.encoder_widths)})")
    # A task parameter the task does not use would be silently dropped: most likely a mix-up.
    used = () if trial.task == "none" else task_registry.get_task(trial.task).param_names
    ignored = [k for k in trial.task_params if k not in used]
    if ignored:
        bad(
            f"{ignored[0]}: task {trial.task!r} does not use parameter(s) {ignored}; "
            f"it takes {list(used) or 'no parameters'}"
        )
    try:
        resolved_task_params(trial)
    except ValueError as exc:
        bad(f"{trial.task}: {exc}")


def _validate_encoder(trial: TrialConfig, bad: Any) -> None:
    """The encoder, its initial weights, stride and the image size it can take."""
    if trial.encoder not in ENCODERS:
        bad(f"encoder: unknown encoder {trial.encoder!r}; choose one of {', '.join(ENCODERS)}")
    if trial.weights not in WEIGHTS:
        bad(f"weights: unknown init {trial.weights!r}; choose one of {', '.join(WEIGHTS)}")
    if trial.weights_path is not None and trial.weights != "imagenet":
        bad(
            "weights_path: a weight file is only read with weights='imagenet'; set weights='imagenet' or drop it"
        )
    if trial.weights == "imagenet" and trial.encoder != "resnet50":
        bad(
            "weights: 'imagenet' exists only for encoder 'resnet50'; use weights='random' for the small encoder"
        )
    if trial.encoder_stride not in ENCODER_STRIDES[trial.encoder]:
        fixed = "; ResNet50's is fixed, as in the paper (or use encoder='small')"
        bad(
            f"encoder_stride: {trial.encoder} is built with stride {list(ENCODER_STRIDES[trial.encoder])} "
            f"(got {trial.encoder_stride!r}){fixed if trial.encoder == 'resnet50' else ''}"
        )
    stride = trial.encoder_stride
    if trial.image_size < max(32, stride) or trial.image_size % stride:
        bad(
            f"image_size: {trial.image_size} px cannot go through the {trial.encoder} encoder (stride "
            f"{stride}); use a multiple of {stride} that is at least 32, such as 32, 64 or 224"
        )


def resolved_task_params(trial: TrialConfig) -> dict[str, Any]:
    """The parameters the trial's task runs with: the arm's, and the task's defaults at the trial's image size
    where the arm leaves one out (`study.tasks.registry.resolve_params`, validated; `{}` for the baseline)."""
    return task_registry.resolve_params(trial.task, trial.image_size, trial.task_params)


#: Share of malignant images among the synthetic lesions of a study without data (`study.data.synth`).
SYNTH_MALIGNANT_FRACTION = 0.35


def synth_array_bytes(n_train: int, n_test: int, size: int) -> int:
    """Bytes of the decoded uint8 arrays of `n_train + n_test` synthetic lesions of `size` px (both splits are
    held at once while rendering, caching and training); at most `MAX_SYNTH_BYTES`."""
    return (int(n_train) + int(n_test)) * int(size) ** 2 * 3


def synth_size_problem(n_train: int, n_test: int, size: int) -> str | None:
    """None, or why `n_train + n_test` lesions of `size` px are too many bytes (names: n_train, n_test, size)."""
    nbytes = synth_array_bytes(n_train, n_test, size)
    if nbytes <= MAX_SYNTH_BYTES:
        return None
    return (
        f"n_train + n_test = {int(n_train) + int(n_test)} images of {int(size)} px take {nbytes / 2**30:.1f} GiB "
        f"as arrays, over the limit of {MAX_SYNTH_BYTES // 2**30} GiB; lower n_train, n_test or size"
    )


def synth_class_counts(
    n: int, malignant_fraction: float = SYNTH_MALIGNANT_FRACTION, split: str = "train"
) -> tuple[int, int]:
    """(benign, malignant) image counts of `n` synthetic lesions; `ValueError` when a class gets too few.

    Train needs 2 per class: the validation split takes at least one of each (the data checks refuse fewer).
    """
    n_mal = int(math.floor(n * malignant_fraction + 0.5))
    n_ben = n - n_mal
    least = 2 if split == "train" else 1
    if n_mal < least or n_ben < least:
        raise ValueError(
            f"write_dataset: n_{split}={n} with malignant_fraction={malignant_fraction} gives {n_ben} benign "
            f"and {n_mal} malignant images; each class needs at least {least} — raise n_{split} or change "
            "the fraction"
        )
    return n_ben, n_mal
