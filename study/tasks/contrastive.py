"""The `simclr` and `byol` pretext tasks (issue 17): two-view methods declared by what they are.

Each task is one `PretextTask` definition with a declared step (`step=TwoViewStep(...)`, `study.tasks.steps`):
two augmented views per image (`study.tasks.views`), whether the method has a predictor and an EMA target,
its loss (`nt_xent` for SimCLR, `normalized_mse` for BYOL), and `two_view_settings`, which turns the task's
resolved parameters into the phase's settings. `study.train.contrastive` implements the step and judges it
with `study.tasks.references.contrastive_scores` (contrastive top-1 of the pooled encoder features on two
test views per image, against chance and against the encoder before the phase). Both go to one report table,
`contrastive`.

The pretext phase's own settings stay trial settings: the step reads `trial.pretext_batch_size`,
`trial.pretext_lr`, `trial.pretext_epochs`, `trial.pretext_patience` and `trial.seed`; the task parameters are
the method's own (`temperature`, `ema_base`), the projection head's and the two view parameters
(`view_strength`, `crop_scale_min`, turned into `study.tasks.views` parameters by `view_params_for`). These
registrations are the only place that defines them: their defaults, bounds and search ranges.

Importing `study.tasks` registers both, after the paper's four tasks. TensorFlow is not imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import study.tasks.views as views
from study.tasks.registry import Param, PretextTask, Search, register
from study.tasks.steps import TwoViewSettings, TwoViewStep

# --------------------------------------------------------------------------------------------------------
# Parameters (one namespace over all tasks: the two methods share the head and view parameters).

TEMPERATURE = Param(
    "temperature",
    float,
    0.2,
    above=0.0,
    limit="NT-Xent divides similarities by it; SimCLR uses 0.1-0.5",
    search=Search(0.05, 1.0, log=True),  # smaller batches prefer larger values
    doc="SimCLR's NT-Xent temperature",
)
EMA_BASE = Param(
    "ema_base",
    float,
    0.99,
    minimum=0.0,
    below=1.0,
    limit="the target's EMA momentum starts here and rises to 1 on a cosine schedule; BYOL uses 0.99-0.996",
    search=Search(0.9, 0.999),  # a short phase has few steps: a lower base lets the target keep up
    doc="BYOL's initial EMA momentum of the target network",
)
PROJECTION_WIDTH = Param(
    "projection_width",
    int,
    256,
    minimum=1,
    search=Search(choices=(64, 128, 256, 512)),
    doc="hidden width of the projection MLP (and of BYOL's predictor)",
)
PROJECTION_DIM = Param(
    "projection_dim",
    int,
    64,
    minimum=1,
    search=Search(choices=(32, 64, 128)),
    doc="output dimension of the projection MLP (and of BYOL's predictor)",
)
VIEW_STRENGTH = Param(
    "view_strength",
    float,
    0.5,
    minimum=0.0,
    limit="it scales the colour-jitter strengths (study.tasks.views.default_view_params); 0 turns jitter off",
    search=Search(0.0, 1.5),
    doc="colour-jitter strength of the views (1: SimCLR-like dermoscopy jitter, 0: no jitter)",
)
CROP_SCALE_MIN = Param(
    "crop_scale_min",
    float,
    0.6,
    above=0.0,
    maximum=1.0,
    limit="the smallest crop's share of the image area; crop_scale = (crop_scale_min, 1)",
    search=Search(0.08, 0.8),
    doc="smallest random crop, as a share of the image area (larger: milder crops)",
)
# Why the view defaults are milder than the papers' (crop_scale_min 0.08-0.2, full jitter): this study's
# images are small (32-64 px on CPU) and its phases short (tens of epochs on hundreds of images). Measured
# with the contrastive step at 32 px (64-96 synthetic lesions, batch 32, 20 epochs): with the strong views
# (crop 0.2, strength 1) SimCLR's contrastive top-1 barely moves (0.08 -> 0.13), while with crops of at
# least 60 % of the area it learns clearly (0.19 -> 0.80 with jitter off). A crop of 20 % of a 32-px image
# is a 14-px patch upsampled back, too little lesion left to match within a demo budget. crop_scale_min 0.6
# and half-strength jitter keep the views informative at small sizes; `study search` explores the papers'
# stronger range (crop 0.08, strength 1.5), which pays off at larger images and longer phases.
VIEW_PARAMS = (PROJECTION_WIDTH, PROJECTION_DIM, VIEW_STRENGTH, CROP_SCALE_MIN)

# Metrics recorded as results columns (`pretext_<metric>`, floats; `contrastive_scores`): top-1 of the
# pooled features (the representation the fine-tune inherits) and of the projections, alignment and
# uniformity (Wang & Isola 2020; lower is better for both).
METRICS = ("top1", "proj_top1", "align", "uniform")
REFERENCE_PAIRS = (("top1", "top1"), ("align", "align"), ("uniform", "uniform"))
METRIC_LABELS = (
    ("top1", "contrastive top-1, encoder features"),
    ("proj_top1", "contrastive top-1, projections"),
    ("align", "alignment (lower: views closer)"),
    ("uniform", "uniformity (lower: features spread)"),
)


def view_params_for(image_size: int, view_strength: float, crop_scale_min: float) -> dict[str, Any]:
    """The view parameters of the two task parameters: `views.default_view_params(image_size,
    view_strength)` with `crop_scale=(crop_scale_min, 1.0)` (validated; `ValueError` ending with the fix)."""
    base = views.default_view_params(image_size, view_strength)
    return views.validate_view_params(image_size, **{**base, "crop_scale": (crop_scale_min, 1.0)})


def _check_views(image_size: int, params: dict[str, Any]) -> None:
    """The two view parameters give valid `study.tasks.views` parameters at `image_size` px."""
    view_params_for(image_size, params["view_strength"], params["crop_scale_min"])


def two_view_settings(image_size: int, params: Mapping[str, Any]) -> TwoViewSettings:
    """The two-view phase's settings from a task's resolved parameters at `image_size` px (the method's own
    parameter: `temperature` or `ema_base`, whichever the task has)."""
    return TwoViewSettings(
        projection_width=params["projection_width"],
        projection_dim=params["projection_dim"],
        view_params=view_params_for(image_size, params["view_strength"], params["crop_scale_min"]),
        temperature=params.get("temperature"),
        ema_base=params.get("ema_base"),
    )


def _contrastive_task(
    name: str, title: str, loss: str, param: Param, step: TwoViewStep, color: str, description: str
) -> PretextTask:
    """One of the two methods: they share views, metrics, references and the report table."""
    return register(
        PretextTask(
            name,
            title,
            loss=loss,
            params=(param, *VIEW_PARAMS),
            step=step,
            check=_check_views,
            headline="top1",
            references=("chance", "initial"),
            metrics=METRICS,
            reference_pairs=REFERENCE_PAIRS,
            higher_is_better=("top1", "proj_top1"),
            table="contrastive",
            metric_labels=METRIC_LABELS,
            color=color,
            description=description,
        )
    )


SIMCLR = _contrastive_task(
    "simclr",
    "SimCLR",
    "nt_xent",
    TEMPERATURE,
    TwoViewStep(predictor=False, ema_target=False, projector_bn=True, settings=two_view_settings),
    "#9467bd",
    "SimCLR (contrastive, two views, NT-Xent)",
)
BYOL = _contrastive_task(
    "byol",
    "BYOL",
    "normalized_mse",
    EMA_BASE,
    TwoViewStep(predictor=True, ema_target=True, projector_bn=False, settings=two_view_settings),
    "#8c564b",
    "BYOL (two views, predictor, EMA target)",
)
