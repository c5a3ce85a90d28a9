"""Pretext tasks: the registry that owns everything about a task, and the paper's four tasks.

The four tasks of the paper (section II.B), registered by name in `TASKS`:

| name            | input                                   | target                    | head        |
|-----------------|-----------------------------------------|---------------------------|-------------|
| `rotation`      | rotated by a random angle in [0, 360)   | angle / 360, float32      | `angle`     |
| `rotation4`     | rotated by 0, 90, 180 or 270 degrees    | class 0..3, int64         | `rotation4` |
| `missing_patch` | one black `patch_size` square           | the original image, uint8 | `image`     |
| `corruption`    | `swap_count` swaps of two squares       | the original image, uint8 | `image`     |

`"none"` is the baseline arm of the study (no pretext phase); it is not a task here. `study.tasks.contrastive`
(imported at the end of this module) registers `simclr` and `byol`, two tasks with their own training step.

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

Registering a task is one definition plus its test. A task is trained in one of two ways:

1. A batch transform (`make_batch`, with a `head` from `HEADS` and a `loss` from `LOSSES`): the standard
   pretext loop of `study.train.phases.run_pretext` trains the encoder and the head on fresh pairs every epoch.
   An image task also gives `region` (the pixels its transform corrupts, drawn from the same rng state), so
   that the report scores the corrupted region on its own. Colorization (predict the colours of a grey
   image quantised to `grey_levels` levels):

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

2. Its own training step (`train`, e.g. SimCLR's two views or BYOL's EMA update, `study.train.contrastive`):
   `make_batch` and `head` may then be None, `loss` names the task's own loss (free text, e.g. "nt_xent"),
   and `metrics` and `headline` must be given. The signature is

       train(run: study.train.phases.PretextRun) -> study.train.phases.PretextResult

   `run_pretext` has already resolved and validated the parameters, checked the data, reseeded Python,
   NumPy and Keras from `trial.seed`, split validation images as for every task, and built the trial's
   encoder (`trial.weights`); `run` holds `trial` (read `pretext_epochs`, `pretext_lr`,
   `pretext_batch_size`, `pretext_patience`, `seed` there), `params` (the task's resolved parameters),
   `encoder` (a `keras.Model` to train in place), `train_images`, `val_images`, `test_images` (uint8
   `(N, S, S, 3)`) and `on_epoch(epoch, logs)` (call it after each completed epoch, 1-based, with
   `{"epoch", "loss", "val_loss"}`). The step draws its randomness from `np.random.default_rng([trial.seed,
   STREAM, epoch])` with stream ids of its own (not `study.train.phases`'s `STREAM_*`), so the phase is
   reproducible bit for bit and resumable, and returns a `PretextResult` with `task = trial.task`, the trained
   `encoder_weights` (`[]` and `diverged=True` when it diverged), `history`, `examples` and `metrics`: the
   keys listed in `metrics`, plus `headline` and `learned` as `study.tasks.references.verdict` gives them, and
   `cost` with `images_seen` and `flops` (estimated training FLOPs, `models.forward_flops`; the cost-benefit
   table reads them; `run_pretext` adds the phase's seconds and device). The
   pretext cache, checkpoints, resume, the fine-tune phase and the CLI need no change: the cache key holds the
   task and its resolved parameters.

Then add, in `tests/test_pretext.py` (or a test module of its own), a property that could fail, e.g. that
the three channels of every colorization input are equal while the targets equal the images.

Parameter names are one namespace over all tasks (one results column each; two tasks may share a name if
they share its type) and may not be `TrialConfig` field names: the pretext phase's own settings
(`pretext_lr`, `pretext_batch_size`, ...) stay trial settings that every task reads from `trial`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.transform import rotate as _skimage_rotate

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

_PIXEL = np.dtype((np.void, 3))  # one RGB pixel as a single 3-byte element
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
    and learn nothing else). `train(run) -> PretextResult`: a training step of its own instead (module
    docstring). `check(image_size, params)`: a rule across parameters beyond each `Param`'s bounds, raising
    `ValueError` (message ends with the fix).

    How it is judged: `metrics` (its `pretext_<metric>` results columns shown in its report table),
    `headline` (the metric that decides whether the pretext learned), `references` (the learning-free
    references it is scored against, `study.tasks.references`), `reference_pairs` ((model metric, reference
    metric) set side by side in the report), `higher_is_better` (metrics beyond
    `references.HIGHER_IS_BETTER` where larger is better). None: the head's defaults (`DEFAULT_*`).
    How it is shown: `title` (tables and figures), `table` (the report's pretext table: `rotation` and
    `image` are the paper's Tables 2 and 3; another name gets a table of its own), `metric_labels`
    (`(metric, label)` pairs naming its metrics in report tables; the paper's tasks' are the report's own),
    `color` (`#rrggbb`; None: a stable colour from the name), and the registration order (arm order in
    tables and figures).
    """

    name: str
    title: str
    head: str | None = None
    loss: str | None = None
    params: tuple[Param, ...] = ()
    make_batch: Callable[..., Batch] | None = None
    region: Callable[..., np.ndarray] | None = None
    train: Callable[[Any], Any] | None = None
    check: Callable[[int, dict[str, Any]], None] | None = None
    headline: str | None = None
    references: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    reference_pairs: tuple[tuple[str, str], ...] | None = None
    higher_is_better: tuple[str, ...] = ()
    table: str | None = None
    metric_labels: tuple[tuple[str, str], ...] = ()
    color: str | None = None
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
        if self.train is None:
            if self.make_batch is None:
                raise ValueError(
                    f"task {name!r}: give make_batch (a batch transform) or train (its own step)"
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


def register(task: PretextTask) -> PretextTask:
    """Add `task` to `TASKS` and return it; `ValueError` for a name already registered (or `"none"`), a
    parameter named like a `TrialConfig` field, or a parameter another task registered with another type."""
    from study.spec.config import TrialConfig

    if not isinstance(task, PretextTask):
        raise ValueError(f"register expects a PretextTask; got {type(task).__name__}")
    if task.name == "none":
        raise ValueError("'none' names the baseline arm; choose another task name")
    if task.name in TASKS:
        raise ValueError(f"pretext task {task.name!r} is already registered; choose another name")
    fields = set(TrialConfig.__dataclass_fields__)
    for p in task.params:
        if p.name in fields:
            raise ValueError(
                f"task {task.name!r}: parameter {p.name!r} is a TrialConfig setting; name it after the task "
                f"(e.g. {task.name}_{p.name}) or read trial.{p.name} in the task"
            )
        other = _param_specs().get(p.name)
        if other is not None and other.type is not p.type:
            raise ValueError(
                f"task {task.name!r}: parameter {p.name!r} is a {other.type.__name__} of another task; "
                "give it the same type or another name"
            )
    TASKS[task.name] = task
    return task


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


# --------------------------------------------------------------------------------------------------------
# Square patches as rows of a strided view: one element = `width` consecutive pixels of one image row.
# Fancy indexing on this view moves a whole patch row (width*3 bytes) per index, so a patch over the batch
# is N*width indices rather than N*width*width pixel indices; measured faster than a per-image slice
# loop for the swaps: 1.8x at 224 px, 6x at 64 px (bench/pretext_throughput.py).


def _row_view(x: np.ndarray, width: int) -> np.ndarray:
    """View of C-contiguous uint8 `x (N, S, S, C)`: element `[n, r, c]` is the bytes of `x[n, r, c:c+width]`.

    Elements overlap in memory; writes through the view land in `x`.
    """
    n, s, _, c = x.shape
    return np.ndarray(
        (n, s, s - width + 1),
        dtype=np.dtype((np.void, width * c)),
        buffer=x,
        strides=(s * s * c, s * c, c),
    )


def _square_index(rows: np.ndarray, cols: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    """Index into `_row_view` for one square per image, top-left corners `rows, cols (N,)`."""
    n = np.arange(rows.shape[0])[:, None]
    return n, rows[:, None] + np.arange(side), cols[:, None]


def _blank_squares(x: np.ndarray, corners: np.ndarray, side: int) -> None:
    """Black out one `side`-px square per image of `x (N, S, S, 3)`, in place; `corners (N, 2)`: row, col."""
    view = _row_view(x, side)
    view[_square_index(corners[:, 0], corners[:, 1], side)] = np.zeros((), view.dtype)


def _swap_squares(x: np.ndarray, pairs: np.ndarray, side: int) -> None:
    """Swap squares in place, in order: `pairs (K, N, 4)` = (rowA, colA, rowB, colB) of disjoint squares."""
    view = _row_view(x, side)
    for swap in pairs:
        a = _square_index(swap[:, 0], swap[:, 1], side)
        b = _square_index(swap[:, 2], swap[:, 3], side)
        patch_a = view[a]  # fancy indexing copies, so the first write cannot clobber it
        view[a] = view[b]
        view[b] = patch_a


def _far_pairs(gen: np.random.Generator, shape: tuple[int, ...], m: int, side: int) -> np.ndarray:
    """Uniform ordered pairs `(p, q)` of positions in `0..m-1` with `|p - q| >= side`; shape `shape + (2,)`.

    Bijection: such a pair with p < q is (p, q - side + 1), a strictly increasing pair from
    `0..m-side`; so draw an ordered pair of distinct values there and stretch the larger one.
    """
    values = m - side + 1
    a = gen.integers(0, values, size=shape)
    b = gen.integers(0, values - 1, size=shape)
    b = b + (b >= a)  # uniform over values != a
    low, high = np.minimum(a, b), np.maximum(a, b) + side - 1
    return np.stack([np.where(a < b, low, high), np.where(a < b, high, low)], axis=-1)


def _near_pairs(gen: np.random.Generator, shape: tuple[int, ...], m: int, side: int) -> np.ndarray:
    """Uniform ordered pairs `(p, q)` of positions in `0..m-1` with `|p - q| < side`; shape `shape + (2,)`."""
    pos = np.arange(m)
    low = np.maximum(pos - side + 1, 0)
    count = np.minimum(pos + side - 1, m - 1) - low + 1
    first = gen.choice(m, size=shape, p=count / count.sum())  # weight p by its number of partners
    second = low[first] + gen.integers(0, count[first])
    return np.stack([first, second], axis=-1)


def _disjoint_square_pairs(
    gen: np.random.Generator, shape: tuple[int, ...], image_size: int, side: int
) -> np.ndarray:
    """Top-left corners of two non-overlapping `side`-px squares, uniform over all such ordered pairs.

    Returns int64 `shape + (4,)` = (rowA, colA, rowB, colB). Two squares are disjoint exactly when their
    rows or their columns are at least `side` apart, so the set splits into "rows far" (columns anything)
    and "rows near, columns far"; pick the part by its size, then draw inside it directly. Unlike
    rejection sampling this costs the same few draws however tight the image is (`side <= image_size//2`).
    """
    m = image_size - side + 1
    n_far = (m - side) * (m - side + 1)  # ordered 1-D pairs at distance >= side
    n_all = m * m
    rows_far_share = n_far * n_all / (n_far * n_all + (n_all - n_far) * n_far)
    rows_far = (gen.random(shape) < rows_far_share)[..., None]
    far = _far_pairs(gen, shape, m, side)
    near = _near_pairs(gen, shape, m, side)
    anywhere = gen.integers(0, m, size=shape + (2,))
    rows = np.where(rows_far, far, near)
    cols = np.where(rows_far, anywhere, far)
    return np.stack([rows[..., 0], cols[..., 0], rows[..., 1], cols[..., 1]], axis=-1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------
# The paper's tasks (section II.B): parameters at 224 px, scaled to the study's image size.


def _square_side(name: str, paper_px: int, maximum: Bound, why: str, search: Search, doc: str) -> Param:
    """A square's side in pixels: the paper's value at 224 px, scaled with the image side."""
    limit = f"{why}; paper: {paper_px} px at {PAPER_IMAGE_SIZE} px"
    return Param(
        name, int, paper_px, scaled=True, minimum=1, maximum=maximum, limit=limit, search=search, doc=doc
    )


PATCH_SIZE = _square_side(
    "patch_size",
    75,
    image_side,
    "the square must fit in the image",
    Search(0.15, 0.5, relative=True),
    "side of the black square, px",
)
SWAP_COUNT = Param(
    "swap_count",
    int,
    100,
    minimum=1,
    search=Search(10, 150, log=True),
    doc="swaps per image, applied in sequence (a count: not scaled)",
)
SWAP_PATCH_SIZE = _square_side(
    "swap_patch_size",
    30,
    half_image_side,
    "two non-overlapping squares must fit side by side",
    Search(0.06, 0.25, relative=True),
    "side of the swapped squares, px",
)


def rotation_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """Rotate each image about its centre by its own angle drawn uniformly in [0, 360) degrees.

    Returns `inputs` uint8 `(N, S, S, 3)` and `targets` float32 `(N,)` = angle / 360 in [0, 1) (drawn as
    float32 first, so the angle used is exactly `360 * target`). Rotation is counter-clockwise,
    `skimage.transform.rotate(order=1 (bilinear), resize=False, preserve_range=True)`, rounded to the
    nearest integer; corners that come from outside the image are filled with constant black
    (`mode="constant", cval=0`), as a rotation matrix applied to the image leaves them empty.
    Draws: `targets = rng.random(N, dtype=float32)`.
    """
    x = check_images(images)
    ROTATION.validate(x.shape[1], **params)
    targets = as_generator(rng).random(x.shape[0], dtype=np.float32)
    return rotate_images(x, targets.astype(np.float64) * 360.0), targets


def rotate_images(images: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rotate image i of uint8 `(N, S, S, 3)` counter-clockwise by `angles_deg[i]` (N,) about its centre.

    The transform behind `rotation_batch` (bilinear, black corners, rounded back to uint8).
    """
    x = check_images(images)
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if len(angles) != len(x):
        raise ValueError(f"angles_deg: need one angle per image ({len(x)}); got {len(angles)}")
    inputs = np.empty_like(x)
    for i, angle in enumerate(angles):
        # per image: skimage's warp takes one transform per call (~2 ms at 224 px, see the bench)
        rotated = _skimage_rotate(
            x[i], angle, resize=False, order=1, mode="constant", cval=0, clip=True, preserve_range=True
        )
        inputs[i] = np.rint(rotated)
    return inputs


def rotation4_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """RotNet: rotate each image counter-clockwise by 90 * k degrees, k uniform in {0, 1, 2, 3}.

    Returns `inputs` uint8 `(N, S, S, 3)` (`np.rot90(image, k)`) and `targets` int64 `(N,)` = k.
    Draws: `k = rng.integers(0, 4, size=N)`.
    """
    x = check_images(images)
    ROTATION4.validate(x.shape[1], **params)
    k = as_generator(rng).integers(0, 4, size=x.shape[0], dtype=np.int64)
    # Move whole 3-byte pixels (void view of shape (N, S, S)): a transposed copy of (S, S, 3) uint8 walks
    # a length-3 inner axis and measured 2-3x slower. One batched copy per k instead of a copy per image.
    pixels = x.view(_PIXEL)[..., 0]
    out = np.empty_like(pixels)
    for quarter in range(4):
        idx = np.flatnonzero(k == quarter)
        if quarter == 0:
            out[idx] = pixels[idx]
        elif quarter == 2:
            out[idx] = pixels[idx, ::-1, ::-1]  # one gather through reversed strides
        else:
            out[idx] = np.rot90(pixels[idx], quarter, axes=(1, 2))
    return out.view(np.uint8).reshape(x.shape), k


def missing_patch_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """Black out one `patch_size` square per image, at a uniform position fully inside the image.

    Returns `inputs` uint8 `(N, S, S, 3)` with the square set to (0, 0, 0) and `targets` a copy of the
    originals. Draws: top-left corners `rng.integers(0, S - patch_size + 1, size=(N, 2))` as (row, col).
    """
    x = check_images(images)
    side = MISSING_PATCH.validate(x.shape[1], **params)["patch_size"]
    corners = as_generator(rng).integers(0, x.shape[1] - side + 1, size=(x.shape[0], 2))
    inputs = x.copy()
    if x.shape[0]:
        _blank_squares(inputs, corners, side)
    return inputs, x.copy()


def corruption_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """Swap two `swap_patch_size` squares of each image, `swap_count` times in sequence.

    The two squares of one swap never overlap: each pair is drawn uniformly among all ordered pairs of
    disjoint squares fully inside the image (`_disjoint_square_pairs`), so every swap, and hence the whole
    corruption, permutes pixels and keeps the multiset of pixel values of each image. Later swaps may
    move pixels that earlier swaps moved, as in the paper. Returns `inputs` uint8 `(N, S, S, 3)` and
    `targets` a copy of the originals. Draws: one `_disjoint_square_pairs` call of shape
    `(swap_count, N)`.
    """
    x = check_images(images)
    checked = CORRUPTION.validate(x.shape[1], **params)
    side = checked["swap_patch_size"]
    pairs = _disjoint_square_pairs(as_generator(rng), (checked["swap_count"], x.shape[0]), x.shape[1], side)
    inputs = x.copy()
    if x.shape[0]:
        _swap_squares(inputs, pairs, side)
    return inputs, x.copy()


def missing_patch_region(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> np.ndarray:
    """The hole `missing_patch_batch` cuts with the same `rng` state: bool `(N, S, S)`, True inside it."""
    x = check_images(images)
    side = MISSING_PATCH.validate(x.shape[1], **params)["patch_size"]
    corners = as_generator(rng).integers(0, x.shape[1] - side + 1, size=(x.shape[0], 2))
    mask = np.zeros(x.shape[:3], bool)
    for i, (r, c) in enumerate(corners):
        mask[i, r : r + side, c : c + side] = True
    return mask


def corruption_region(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> np.ndarray:
    """The pixels `corruption_batch` with the same `rng` state moves: bool `(N, S, S)`, True where a pixel
    ends up holding another position's content (a pixel swapped away and back again counts as unmoved).

    Replays the swaps on an image whose pixels encode their own position (3 bytes: up to 2**24 pixels).
    """
    x = check_images(images)
    n, s = x.shape[:2]
    position = np.arange(s * s, dtype=np.uint32).reshape(1, s, s)
    coded = np.stack([(position >> shift) & 0xFF for shift in (16, 8, 0)], axis=-1).astype(np.uint8)
    moved, _ = corruption_batch(np.repeat(coded, n, axis=0), rng, **params)
    decoded = (moved[..., 0].astype(np.uint32) << 16) | (moved[..., 1].astype(np.uint32) << 8) | moved[..., 2]
    return decoded != position


ROTATION = register(
    PretextTask(
        "rotation",
        "Rotation prediction",
        "angle",
        "mse",
        make_batch=rotation_batch,
        color="#1f77b4",
        description="Rotation prediction (angle regression)",
    )
)
ROTATION4 = register(
    PretextTask(
        "rotation4",
        "4-way rotation",
        "rotation4",
        "sparse_categorical_crossentropy",
        make_batch=rotation4_batch,
        color="#17becf",
        description="Rotation classification (0/90/180/270 degrees)",
    )
)
MISSING_PATCH = register(
    PretextTask(
        "missing_patch",
        "Missing patch",
        "image",
        "mse",
        (PATCH_SIZE,),
        make_batch=missing_patch_batch,
        region=missing_patch_region,
        # Outside the hole the input is already the target: only the hole says what was learned.
        headline="region_mse",
        references=("identity", "meanfill", "biharmonic"),
        # The composite keeps the visible pixels (as the identity and mean-fill references do), so it is
        # compared on the same whole-image metrics.
        metrics=(*DEFAULT_METRICS["image"], "composite_mse", "composite_ssim"),
        reference_pairs=(
            ("region_mse", "region_mse"),
            ("mse_mean", "mse_mean"),
            ("ssim_mean", "ssim_mean"),
            ("composite_mse", "mse_mean"),
            ("composite_ssim", "ssim_mean"),
        ),
        color="#ff7f0e",
        description="Missing patch (inpainting)",
    )
)
CORRUPTION = register(
    PretextTask(
        "corruption",
        "Corruption removal",
        "image",
        "mse",
        (SWAP_COUNT, SWAP_PATCH_SIZE),
        make_batch=corruption_batch,
        region=corruption_region,
        color="#2ca02c",
        description="Corruption removal (patch swaps)",
    )
)

# The contrastive tasks (`simclr`, `byol`) are registered in a module of their own, after the paper's four.
from study.tasks import contrastive as _ssl_tasks  # noqa: E402,F401
