"""The `simclr` and `byol` pretext tasks (issue 17): registrations of `study.train.contrastive`'s training step.

Each task is one `PretextTask` definition with a training step of its own (`train=`, `study.tasks.registry` module
docstring): two augmented views per image (`study.tasks.views`), the method's loss, and the verdict of
`study.train.contrastive.contrastive_scores` (contrastive top-1 of the pooled encoder features on two test views
per image, against chance and against the encoder before the phase). Both go to one report table,
`contrastive`.

The pretext phase's own settings stay trial settings: the step reads `trial.pretext_batch_size`,
`trial.pretext_lr`, `trial.pretext_epochs`, `trial.pretext_patience` and `trial.seed`; the task parameters are
the method's own (`temperature`, `ema_base`), the projection head's and the two view parameters
(`view_strength`, `crop_scale_min`, turned into `study.tasks.views` parameters by `contrastive.view_params_for`).

Importing this module registers both (once; after the paper's four tasks when `study.tasks.registry` imports it at
its end, which puts them in every study, CLI and Ray worker). TensorFlow is not imported here:
`study.train.contrastive` is imported when a step runs.
"""

from __future__ import annotations

from typing import Any

from study.tasks.registry import Param, PretextTask, Search, register

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


def _check_views(image_size: int, params: dict[str, Any]) -> None:
    """The two view parameters give valid `study.tasks.views` parameters at `image_size` px."""
    from study.tasks import views  # numpy and scikit-image only; imported here as views imports study.tasks.registry

    base = views.default_view_params(image_size, params["view_strength"])
    views.validate_view_params(image_size, **{**base, "crop_scale": (params["crop_scale_min"], 1.0)})


def train_ssl(run: Any, kind: str) -> Any:
    """The pretext phase of `simclr` / `byol` (`kind`): `contrastive.train_contrastive` on the run's images,
    scored on two views of its test images; a `study.train.phases.PretextResult` of `run.trial.task`."""
    import dataclasses

    from study.train import contrastive  # TensorFlow: only where a trial trains

    trial, p = run.trial, run.params
    size = int(run.encoder.input.shape[1])
    method = {"temperature": p["temperature"]} if kind == "simclr" else {"ema_base": p["ema_base"]}
    result = contrastive.train_contrastive(
        kind,
        run.encoder,
        run.train_images,
        run.val_images,
        seed=trial.seed,
        epochs=trial.pretext_epochs,
        batch_size=trial.pretext_batch_size,
        lr=trial.pretext_lr,
        projection_width=p["projection_width"],
        projection_dim=p["projection_dim"],
        view_params=contrastive.view_params_for(size, p["view_strength"], p["crop_scale_min"]),
        on_epoch=run.on_epoch,
        images_test=run.test_images,
        patience=trial.pretext_patience,
        **method,
    )
    return dataclasses.replace(result.as_pretext_result(), task=trial.task)


def _train_simclr(run: Any) -> Any:
    return train_ssl(run, "simclr")


def _train_byol(run: Any) -> Any:
    return train_ssl(run, "byol")


def _contrastive_task(name: str, title: str, loss: str, param: Any, train: Any, color: str, description: str):
    """One of the two methods: they share views, metrics, references and the report table."""
    return register(
        PretextTask(
            name,
            title,
            loss=loss,
            params=(param, *VIEW_PARAMS),
            train=train,
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
    _train_simclr,
    "#9467bd",
    "SimCLR (contrastive, two views, NT-Xent)",
)
BYOL = _contrastive_task(
    "byol", "BYOL", "byol", EMA_BASE, _train_byol, "#8c564b", "BYOL (two views, predictor, EMA target)"
)
