"""The pretext-task registry: `PretextTask` holds everything the study knows about a task, `TASKS` every one.

The tasks themselves are defined elsewhere in `study.tasks` (`paper`: the paper's four; `contrastive`:
`simclr` and `byol`); `study/tasks/__init__.py` imports those modules, so importing `study.tasks` (or any
module in it) registers every task. This module imports no task module and nothing else of `study`.

Conventions: images are `uint8` arrays of shape `(N, S, S, 3)` (RGB, channels-last); sizes are in pixels;
angles are counter-clockwise as the image is displayed (row 0 at the top), the convention of both
`skimage.transform.rotate` and `np.rot90`. Every transform takes an explicit `numpy.random.Generator` (or an
integer seed) and draws from nothing else, so a batch is a pure function of `(images, rng state, params)`.
Transforms never modify their input; targets are fresh arrays.

One place per piece of knowledge: a `PretextTask` holds everything about its task, and the rest of the study
reads it from here. Its parameters (`Param`: type, default scaled to the image size, bounds, search range)
give the study-file and arm keys (`[[arms]] patch_size = 11`), `TrialConfig.task_params`, validation, the
defaults (filled in once, when a trial's config is resolved: `resolve_params`), the Optuna space of `study
search` and one results.csv column per registered parameter (`param_names`). Its head, loss, metrics,
headline and references decide how the pretext phase is trained and judged; `table`, `title`, `color` and the
registration order decide where and how the report shows it.

Registering a task is one definition (in a module of `study.tasks`, imported by its `__init__`) plus its test.
A task is trained in one of three ways:

1. A batch transform (`make_batch`, with a `head` from `HEADS` and a `loss` from `LOSSES`): the standard
   pretext loop of `study.train.pretext_phase.run_pretext` trains the encoder and the head on fresh pairs
   every epoch. An image task also gives `region` (the pixels its transform corrupts, drawn from the same rng
   state), so that the report scores the corrupted region on its own. Colorization (predict the colours of a
   grey image quantised to `grey_levels` levels):

>>> import numpy as np
>>> def colorization_batch(images, rng, **params):
...     x = check_images(images)
...     step = 256 // get_task("colorization").validate(x.shape[1], **params)["grey_levels"]
...     grey = np.rint(x @ np.array([0.299, 0.587, 0.114])).astype(np.uint8) // step * step
...     return np.repeat(grey[..., None], 3, axis=-1), x.copy()
>>> def colorization_region(images, rng, **params):
...     return np.ones(check_images(images).shape[:3], bool)  # every pixel's colour is to be predicted
>>> task = register(PretextTask(
...     name="colorization", title="Colorization", head="image", loss="mse",
...     params=(Param("grey_levels", int, 256, minimum=2, maximum=256, search=Search(8, 256, log=True)),),
...     make_batch=colorization_batch, region=colorization_region))
>>> inputs, targets = get_task("colorization").make_batch(np.zeros((2, 8, 8, 3), np.uint8), rng=0,
...                                                       **default_params("colorization", 8))
>>> inputs.shape, targets.dtype
((2, 8, 8, 3), dtype('uint8'))

2. A declared step the study implements (`step`, a `study.tasks.steps` declaration such as `TwoViewStep`:
   two augmented views per image, whether the method has a predictor and an EMA target, and how its
   resolved parameters become the phase's settings); `loss` names the step's loss
   (`study.tasks.steps.TWO_VIEW_LOSSES`), `make_batch` and `head` are None, and `metrics` and `headline`
   must be given. `simclr` and `byol`
   (`study.tasks.contrastive`) are declared this way; `study.train` owns the implementation and finds it by
   the declaration's type, never by the task's name.

3. A training step of its own (`train`): `make_batch` and `head` may then be None, `loss` names the task's
   own loss (free text), and `metrics` and `headline` must be given. The signature is

       train(run: study.train.results.PretextRun) -> study.train.results.PretextResult

   `run_pretext` has already resolved and validated the parameters, checked the data, reseeded Python,
   NumPy and Keras from `trial.seed`, split validation images as for every task, and built the trial's
   encoder (`trial.weights`); `run` holds `trial` (read `pretext_epochs`, `pretext_lr`,
   `pretext_batch_size`, `pretext_patience`, `seed` there), `params` (the task's resolved parameters),
   `encoder` (a `keras.Model` to train in place), `train_images`, `val_images`, `test_images` (uint8
   `(N, S, S, 3)`) and `on_epoch(epoch, logs)` (call it after each completed epoch, 1-based, with
   `{"epoch", "loss", "val_loss"}`). The step draws its randomness from `np.random.default_rng([trial.seed,
   STREAM, epoch])` with stream ids of its own (not `study.train.pretext_phase`'s `STREAM_*`), so the phase
   is reproducible bit for bit and resumable, and returns a `PretextResult` with `task = trial.task`, the
   trained `encoder_weights` (`[]` and `diverged=True` when it diverged), `history`, `examples` and
   `metrics`: the keys listed in `metrics`, plus `headline` and `learned` as `study.tasks.references.verdict`
   gives them, and `cost` with `images_seen` and `flops` (estimated training FLOPs, `models.forward_flops`;
   the cost-benefit table reads them; `run_pretext` adds the phase's seconds and device). The pretext cache,
   checkpoints, resume, the fine-tune phase and the CLI need no change: the cache key holds the task and its
   resolved parameters.

Then add, in `tests/tasks/test_pretext.py` (or a test module of its own), a property that could fail, e.g.
that the three channels of every colorization input are equal while the targets equal the images.

Parameter names are one namespace over all tasks (one results column each; two tasks may share a name if
they share its type) and may not name a trial setting (`reserve_settings`: `study.spec.config` reserves
every `TrialConfig` field): the pretext phase's own settings (`pretext_lr`, `pretext_batch_size`, ...) stay
trial settings that every task reads from `trial`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import study.tasks.references as references
from study.tasks.steps import TWO_VIEW_LOSSES, TwoViewStep

HEADS = ("angle", "rotation4", "image")
LOSSES = ("mse", "sparse_categorical_crossentropy")

# Paper values (section II.B) are given at 224 px; a `Param(scaled=True)` default scales from there.
PAPER_IMAGE_SIZE = 224

Batch = tuple[np.ndarray, np.ndarray]
Number = int | float
#: A parameter bound: a number, a function of the image side in pixels, or None (no bound).
Bound = Number | Callable[[int], Number] | None

# Per head: what a task of that head reports and how it is judged (`PretextTask` fields left None).
DEFAULT_HEADLINE = {"angle": "aad_circ_deg", "rotation4": "accuracy", "image": "mse_mean"}
DEFAULT_REFERENCES = {"angle": ("constant",), "rotation4": ("chance", "majority"), "image": ("identity",)}
DEFAULT_METRICS = {
    "angle": ("mse", "aad", "aad_deg", "aad_circ", "aad_circ_deg", "sd_deg", "sd_circ_deg"),
    "rotation4": ("accuracy", "loss"),
    "image": ("mse_mean", "mse_sd", "ssim_mean", "ssim_sd", "region_mse"),
}
DEFAULT_REFERENCE_PAIRS = {
    "angle": (("aad_circ_deg", "aad_circ_deg"), ("mse", "mse")),
    "rotation4": (("accuracy", "accuracy"),),
    "image": (("mse_mean", "mse_mean"), ("region_mse", "region_mse"), ("ssim_mean", "ssim_mean")),
}
DEFAULT_TABLE = {"angle": "rotation", "rotation4": "rotation", "image": "image"}

_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# Keys a task parameter may not take: Tune's grid tables and the arm's own key.
_RESERVED = frozenset({"task", "arm", "subset", "task_params"})


# --------------------------------------------------------------------------------------------------------
# Parameters


def image_side(image_size: int) -> int:
    """Bound: the image side itself (a square that must fit in the image)."""
    return image_size


def half_image_side(image_size: int) -> int:
    """Bound: half the image side, rounded down (two squares side by side)."""
    return image_size // 2


@dataclass(frozen=True)
class Search:
    """How `study search` (Optuna) draws a parameter: uniform in `[low, high]` (log-uniform with `log`), or
    one of `choices`. `relative`: `low` and `high` are fractions of the image side (an int parameter is
    rounded, at least 1), so one range serves every image size."""

    low: Number | None = None
    high: Number | None = None
    log: bool = False
    relative: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.choices:
            if self.low is not None or self.high is not None or self.log or self.relative:
                raise ValueError("Search: give either choices or a low/high range, not both")
            return
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.low, self.high)):
            raise ValueError(f"Search: low and high must be numbers; got {self.low!r}, {self.high!r}")
        if not self.low <= self.high or (self.log and self.low <= 0):
            raise ValueError(f"Search: need low <= high (and low > 0 with log); got {self.low}, {self.high}")

    def suggest(self, trial: Any, param: Param, image_size: int, low_high: tuple | None = None) -> Any:
        """Draw `param` from an Optuna `trial`; `low_high` replaces the range (a study's `param_ranges`)."""
        if self.choices:
            return trial.suggest_categorical(param.name, list(self.choices))
        low, high = low_high or (self.low, self.high)
        if self.relative:
            low, high = low * image_size, high * image_size
        if param.type is int:
            low, high = (
                (max(1, round(v)) for v in (low, high)) if self.relative else (round(low), round(high))
            )
            return trial.suggest_int(param.name, low, high, log=self.log)
        return trial.suggest_float(param.name, float(low), float(high), log=self.log)


# (attribute, test the value must pass, words of the message)
_BOUNDS = (
    ("minimum", operator.ge, ">="),
    ("above", operator.gt, ">"),
    ("maximum", operator.le, "<="),
    ("below", operator.lt, "<"),
)


@dataclass(frozen=True)
class Param:
    """One task parameter: its name (an arm / study-file key and a results.csv column), `type` (`int` or
    `float`), `default`, bounds and search range.

    `default`: the value used when an arm leaves it out; with `scaled`, the value at `PAPER_IMAGE_SIZE`
    (224 px), scaled linearly with the image side (an int rounded half up, at least 1). `minimum` /
    `maximum` (inclusive) and `above` / `below` (exclusive) bound it; each is a number or a function of the
    image side (`image_side`, `half_image_side`). `limit`: why the bounds are what they are, said when a
    value breaks one. `search`: its range in `study search` (None: not searched). `doc`: meaning and unit.
    """

    name: str
    type: type
    default: Number
    scaled: bool = False
    minimum: Bound = None
    maximum: Bound = None
    above: Bound = None
    below: Bound = None
    limit: str = ""
    search: Search | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name in _RESERVED:
            raise ValueError(f"parameter name must be an identifier such as 'tile_count'; got {self.name!r}")
        if self.type not in (int, float):
            raise ValueError(f"parameter {self.name!r}: type must be int or float; got {self.type!r}")
        if isinstance(self.default, bool) or not isinstance(self.default, self.type):
            raise ValueError(
                f"parameter {self.name!r}: default must be a {self.type.__name__}; got {self.default!r}"
            )
        if self.search is not None and not isinstance(self.search, Search):
            raise ValueError(f"parameter {self.name!r}: search must be a Search or None")

    def default_for(self, image_size: int) -> Number:
        """The default at `image_size` px (`default` itself unless `scaled`)."""
        if not self.scaled:
            return self.default
        if self.type is float:
            return self.default * image_size / PAPER_IMAGE_SIZE
        # Integer round-half-up of default * image_size / 224 (Python's round() would round 0.5 to even).
        return max(1, (2 * self.default * image_size + PAPER_IMAGE_SIZE) // (2 * PAPER_IMAGE_SIZE))

    def check(self, value: Any, image_size: int) -> Number:
        """`value` as this parameter's type, within its bounds at `image_size` px; `ValueError` otherwise."""
        name = self.name
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer; got {value!r}")
            value = int(value)
        else:
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
            value = float(value)
        why = f" ({self.limit})" if self.limit else ""
        for attr, passes, words in _BOUNDS:
            bound = getattr(self, attr)
            sized = callable(bound)
            bound = bound(image_size) if sized else bound
            if bound is None or passes(value, bound):
                continue
            if attr == "maximum":
                where = f" for a {image_size}-px image" if sized else ""
                raise ValueError(f"{name}={value} is too large{where}; use at most {bound}{why}")
            raise ValueError(f"{name} must be {words} {bound}; got {value}{why}")
        return value


# --------------------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class PretextTask:
    """One registered pretext task: everything the study knows about it (see the module docstring).

    `make_batch(images, rng, **params) -> (inputs, targets)`: `images` uint8 `(N, S, S, 3)`, `rng` a
    `numpy.random.Generator` or an integer seed; `inputs` uint8 `(N, S, S, 3)`; `targets` by head:
    `angle` -> float32 `(N,)` angle/360 in [0, 1), `rotation4` -> int64 `(N,)` in 0..3, `image` -> uint8
    `(N, S, S, 3)` originals. Image tasks: `region(images, rng, **params) -> bool (N, S, S)`, the pixels
    `make_batch` with the same rng state corrupts (scored on their own: a model can copy the visible pixels
    and learn nothing else). `step`: a declared training step instead (`study.tasks.steps`, e.g. a
    `TwoViewStep`; `loss` then one of `TWO_VIEW_LOSSES`). `train(run) -> PretextResult`: a training step of
    its own instead (module docstring). `check(image_size, params)`: a rule across parameters beyond each
    `Param`'s bounds, raising `ValueError` (message ends with the fix).

    How it is judged: `metrics` (its `pretext_<metric>` results columns shown in its report table),
    `headline` (the metric that decides whether the pretext learned), `references` (the learning-free
    references it is scored against, `study.tasks.references`), `reference_pairs` ((model metric, reference
    metric) set side by side in the report), `higher_is_better` (metrics beyond
    `references.HIGHER_IS_BETTER` where larger is better). None: the head's defaults (`DEFAULT_*`).
    How it is shown: `title` (tables and figures), `table` (the report's pretext table: `rotation` and
    `image` are the paper's Tables 2 and 3; another name gets a table of its own), `metric_labels`
    (`(metric, label)` pairs naming its metrics in report tables; the paper's tasks' are the report's own),
    `color` (`#rrggbb`; None: a stable colour from the name), `paper_table1` (`(regime, soft accuracy %)`
    of its arm in the paper's Table 1, set beside the study's; empty: a task the paper did not run), and the
    registration order (arm order in tables and figures).
    """

    name: str
    title: str
    head: str | None = None
    loss: str | None = None
    params: tuple[Param, ...] = ()
    make_batch: Callable[..., Batch] | None = None
    region: Callable[..., np.ndarray] | None = None
    train: Callable[[Any], Any] | None = None
    step: TwoViewStep | None = None
    check: Callable[[int, dict[str, Any]], None] | None = None
    headline: str | None = None
    references: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    reference_pairs: tuple[tuple[str, str], ...] | None = None
    higher_is_better: tuple[str, ...] = ()
    table: str | None = None
    metric_labels: tuple[tuple[str, str], ...] = ()
    color: str | None = None
    paper_table1: tuple[tuple[str, float], ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"task name must be a Python identifier such as 'jigsaw'; got {name!r}")
        if not isinstance(self.params, tuple) or not all(isinstance(p, Param) for p in self.params):
            raise ValueError(f"task {name!r}: params must be a tuple of Param; got {self.params!r}")
        if len({p.name for p in self.params}) != len(self.params):
            raise ValueError(f"task {name!r}: params name a parameter twice")
        for attr in ("make_batch", "region", "train", "check"):
            if getattr(self, attr) is not None and not callable(getattr(self, attr)):
                raise ValueError(f"task {name!r}: {attr} must be a callable or None")
        if self.step is not None:
            self._check_step()
        elif self.train is None:
            if self.make_batch is None:
                raise ValueError(
                    f"task {name!r}: give make_batch (a batch transform), step (a declared step) or train "
                    "(its own step)"
                )
            if self.head not in HEADS:
                raise ValueError(f"task {name!r}: head must be one of {HEADS}; got {self.head!r}")
            if self.loss not in LOSSES:
                raise ValueError(f"task {name!r}: loss must be one of {LOSSES}; got {self.loss!r}")
            if self.head == "image" and self.region is None:
                raise ValueError(f"task {name!r}: an image task needs region= (the pixels it corrupts)")
        else:
            if self.head is not None and self.head not in HEADS:
                raise ValueError(f"task {name!r}: head must be None or one of {HEADS}; got {self.head!r}")
            if not isinstance(self.loss, str) or not self.loss:
                raise ValueError(
                    f"task {name!r}: name the loss its train step minimises, e.g. loss='nt_xent'"
                )
        defaults = {
            "headline": DEFAULT_HEADLINE,
            "references": DEFAULT_REFERENCES,
            "metrics": DEFAULT_METRICS,
            "reference_pairs": DEFAULT_REFERENCE_PAIRS,
            "table": DEFAULT_TABLE,
        }
        for attr, by_head in defaults.items():
            if getattr(self, attr) is None:
                object.__setattr__(self, attr, by_head.get(self.head, name if attr == "table" else ()))
        if not self.metrics or self.headline not in self.metrics:
            raise ValueError(
                f"task {name!r}: give metrics (its pretext metric names) and a headline among them; "
                f"got metrics={self.metrics!r}, headline={self.headline!r}"
            )
        if not isinstance(self.table, str) or not self.table.isidentifier():
            raise ValueError(
                f"task {name!r}: table must be an identifier such as 'image'; got {self.table!r}"
            )
        unknown = [m for m, _ in self.metric_labels if m not in self.metrics]
        if unknown:
            raise ValueError(f"task {name!r}: metric_labels name metric(s) {unknown} not in metrics")
        if self.color is not None and not (isinstance(self.color, str) and _COLOR.fullmatch(self.color)):
            raise ValueError(f"task {name!r}: color must be '#rrggbb' or None; got {self.color!r}")

    def metric_higher_is_better(self, metric: str) -> bool:
        """Whether a larger value of its pretext `metric` is better: `references.HIGHER_IS_BETTER` or the
        task's own `higher_is_better`; every other scored metric is an error (smaller is better)."""
        return metric in references.HIGHER_IS_BETTER or metric in self.higher_is_better

    def _check_step(self) -> None:
        """A declared step: no batch transform or own step beside it, a loss the declaration supports."""
        name = self.name
        if not isinstance(self.step, TwoViewStep):
            raise ValueError(f"task {name!r}: step must be a study.tasks.steps.TwoViewStep or None")
        if self.make_batch is not None or self.train is not None or self.head is not None:
            raise ValueError(f"task {name!r}: a declared step replaces make_batch, train and head; drop them")
        if self.loss not in TWO_VIEW_LOSSES:
            raise ValueError(
                f"task {name!r}: a two-view step's loss is one of {TWO_VIEW_LOSSES}; got {self.loss!r}"
            )
        self.step.check(name, self.loss)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self, image_size: int) -> dict[str, Number]:
        """Every parameter's default at `image_size` px (not validated: see `resolve`)."""
        size = _check_image_size(image_size)
        return {p.name: p.default_for(size) for p in self.params}

    def validate(self, image_size: int, **params: Any) -> dict[str, Number]:
        """The checked parameters (each of the task's, converted to its type); `ValueError` ending with the fix.

        Parameters the task does not use must be absent or None (a value there is a likely mix-up, e.g.
        `patch_size` given to `corruption`); each of its own must be given."""
        size = _check_image_size(image_size)
        unused = sorted(k for k, v in params.items() if k not in self.param_names and v is not None)
        if unused:
            raise ValueError(
                f"task {self.name!r} does not use parameter(s) {unused}; pass only {list(self.param_names) or 'none'}"
            )
        checked: dict[str, Number] = {}
        for p in self.params:
            if params.get(p.name) is None:
                raise ValueError(
                    f"task {self.name!r} needs {p.name}; pass {p.name}=... "
                    f"(default_params({self.name!r}, {size}) gives its default at {size} px)"
                )
            checked[p.name] = p.check(params[p.name], size)
        if self.check is not None:
            self.check(size, dict(checked))
        return checked

    def resolve(self, image_size: int, given: Mapping[str, Any] | None = None) -> dict[str, Number]:
        """The parameters a trial runs with: `given` where set (not None), the defaults at `image_size` px
        elsewhere; validated."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        return self.validate(image_size, **{**self.defaults(image_size), **given})


TASKS: dict[str, PretextTask] = {}
#: Names a task parameter may not take, with who owns them (`reserve_settings`).
_SETTINGS: dict[str, str] = {}


def reserve_settings(names: Iterable[str], owner: str) -> None:
    """Reserve `names` (settings of `owner`, e.g. `TrialConfig`'s fields, which `study.spec.config`
    reserves when it is imported) so that no task parameter takes one; `ValueError` if a registered task's
    parameter already does."""
    names = set(names)
    for task in TASKS.values():
        _check_not_setting(task, names, owner)
    _SETTINGS.update(dict.fromkeys(names, owner))


def _check_not_setting(task: PretextTask, names: Iterable[str], owner: str) -> None:
    for p in task.params:
        if p.name in names:
            raise ValueError(
                f"task {task.name!r}: parameter {p.name!r} is a {owner} setting; name it after the task "
                f"(e.g. {task.name}_{p.name}) or read trial.{p.name} in the task"
            )


def register(task: PretextTask) -> PretextTask:
    """Add `task` to `TASKS` and return it; `ValueError` for a name already registered (or `"none"`), a
    parameter named like a reserved setting (`reserve_settings`: a `TrialConfig` field), or a parameter
    another task registered with another type."""
    if not isinstance(task, PretextTask):
        raise ValueError(f"register expects a PretextTask; got {type(task).__name__}")
    if task.name == "none":
        raise ValueError("'none' names the baseline arm; choose another task name")
    if task.name in TASKS:
        raise ValueError(f"pretext task {task.name!r} is already registered; choose another name")
    for owner in dict.fromkeys(_SETTINGS.values()):
        _check_not_setting(task, {k for k, v in _SETTINGS.items() if v == owner}, owner)
    for p in task.params:
        other = _param_specs().get(p.name)
        if other is not None and other.type is not p.type:
            raise ValueError(
                f"task {task.name!r}: parameter {p.name!r} is a {other.type.__name__} of another task; "
                "give it the same type or another name"
            )
    TASKS[task.name] = task
    return task


def metric_direction(metric: str) -> int:
    """1 (higher is better) or -1 (lower is better) for a pretext metric a registered task scores (its
    `metrics`, by `PretextTask.metric_higher_is_better`); 0 (no direction) for anything else of the pretext
    phase (references, cost, settings). The one source of `pretext_<metric>` directions
    (`study.spec.schema.metric_direction`)."""
    for task in TASKS.values():
        if metric in (task.metrics or ()):
            return 1 if task.metric_higher_is_better(metric) else -1
    return 0


def get_task(name: str) -> PretextTask:
    """The registered task called `name`; `ValueError` listing the known tasks otherwise."""
    known = ", ".join(TASKS)
    if name == "none":
        raise ValueError(
            f"'none' is the baseline arm (no pretext phase), not a pretext task; known tasks: {known}"
        )
    if name not in TASKS:
        raise ValueError(f"unknown pretext task {name!r}; known tasks: {known}")
    return TASKS[name]


def resolve_params(
    task_name: str, image_size: int, given: Mapping[str, Any] | None = None
) -> dict[str, Number]:
    """The task's parameters for a trial: `given` where set, defaults scaled to `image_size` elsewhere,
    validated (`PretextTask.resolve`); `{}` for the `"none"` baseline arm."""
    if task_name == "none":
        return {}
    return get_task(task_name).resolve(image_size, given)


def default_params(task_name: str, image_size: int) -> dict[str, Number]:
    """The task's default parameters at `image_size` px, validated (`{}` for the rotation tasks and `"none"`).

    The paper's sizes scale linearly from 224 px, rounded half up, at least 1; `swap_count` stays 100 (a
    count, not a size). An image too small for the task raises `ValueError`.
    Examples: 64 px -> patch_size 21, swap_patch_size 9; 224 px -> 75 and 30.
    """
    _check_image_size(image_size)
    return resolve_params(task_name, image_size)


def param_names() -> tuple[str, ...]:
    """Every registered task parameter, in registration order: the arm keys and results.csv columns."""
    return tuple(_param_specs())


def param_spec(name: str) -> Param:
    """The registered `Param` called `name` (tasks sharing a name share its type); `KeyError` otherwise."""
    return _param_specs()[name]


def _param_specs() -> dict[str, Param]:
    specs: dict[str, Param] = {}
    for task in TASKS.values():
        for p in task.params:
            specs.setdefault(p.name, p)
    return specs


def tables() -> tuple[str, ...]:
    """The report's pretext tables of the registered tasks, in registration order."""
    return tuple(dict.fromkeys(task.table for task in TASKS.values()))


# --------------------------------------------------------------------------------------------------------
# Helpers for task authors: input checks shared by every task.


def check_images(images: Any) -> np.ndarray:
    """`images` as a C-contiguous uint8 `(N, S, S, 3)` array (N may be 0); `ValueError` otherwise."""
    if not isinstance(images, np.ndarray):
        raise ValueError(
            f"images must be a numpy uint8 array of shape (N, S, S, 3); got {type(images).__name__}; "
            "convert with np.asarray(images, dtype=np.uint8)"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must have dtype uint8 (0-255); got {images.dtype}; convert with "
            "np.clip(np.rint(images), 0, 255).astype(np.uint8) (undo model preprocessing first)"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must have shape (N, S, S, 3) (RGB, channels-last); got {images.shape}; "
            "for one image pass images[None]"
        )
    if images.shape[1] != images.shape[2] or images.shape[1] == 0:
        raise ValueError(f"images must be non-empty squares (N, S, S, 3); got {images.shape}; resize first")
    return np.ascontiguousarray(images)


def as_generator(rng: Any) -> np.random.Generator:
    """`rng` itself if it is a `numpy.random.Generator`, `np.random.default_rng(rng)` for an integer seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(
        f"rng must be a numpy.random.Generator or a non-negative integer seed; got {rng!r}; derive one per "
        "epoch with np.random.default_rng([seed, stream, epoch])"
    )


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer number of pixels; got {image_size!r}")
    return int(image_size)
