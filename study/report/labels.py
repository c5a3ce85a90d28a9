"""The report's names for things: arms, tasks, regimes, label fractions, metrics and references.

Titles of registered tasks come from the registry (`PretextTask.title`, `.metric_labels`); everything here
is a string for a reader, never a key the analysis computes with.
"""

from __future__ import annotations

import re

import pandas as pd

from study.analysis import arm_stem, base_task, metric_direction
from study.tasks import registry

BASELINE_TITLE = "No self-supervision"


METRIC_LABELS = {
    "test_soft_accuracy": "soft accuracy",
    "test_accuracy": "accuracy",
    "test_balanced_accuracy": "balanced accuracy",
    "test_auc": "AUC",
    "test_sensitivity": "sensitivity",
    "test_specificity": "specificity",
    "test_f1": "F1",
    "test_loss": "test loss",
    "val_loss": "validation loss",
    "stop_epoch": "stop epoch",
    "best_epoch": "best epoch",
}


def direction_words(metric: str) -> tuple[str, str]:
    """How an arm compares with the baseline on ``metric``: ``("better", "worse")`` for a metric with a
    direction (``analysis.metric_direction``), ``("higher", "lower")`` for one without (stop epoch)."""
    return ("better", "worse") if metric_direction(metric) else ("higher", "lower")


def task_title(task: str) -> str:
    """A task's title: the registry's (`PretextTask.title`); a task not registered here by its name."""
    if task == "none":
        return BASELINE_TITLE
    registered = registry.TASKS.get(task)
    return registered.title if registered else task.replace("_", " ").capitalize()


def arm_title(arm: str) -> str:
    """Display title: its task's title (`task_title`); variants keep their parameters."""
    stem = arm_stem(arm)
    title = task_title(base_task(arm))
    rest = arm[len(stem) :].strip()
    return f"{title} {rest}" if rest else title


def regime_title(regime: str) -> str:
    """`"none" -> "no early stopping"`, `"patience10" -> "patience 10"` (other suffixes kept)."""
    if regime == "none":
        return "no early stopping"
    m = re.fullmatch(r"patience(\d+)(.*)", regime)
    if m:
        rest = m.group(2).strip("_ ")
        return f"patience {m.group(1)}" + (f" ({rest.replace('_', ' ')})" if rest else "")
    return regime


def fraction_title(label_fraction: float) -> str:
    """`0.05 -> "5 % labels"`, `1.0 -> "100 % labels"` (share of the training labels the fine-tune saw)."""
    return f"{100 * float(label_fraction):.3g} % labels"


def cell_title(label_fraction: float, regime_title_text: str, with_fraction: bool) -> str:
    """Where a comparison lives: ``"patience 3"``, or ``"5 % labels, patience 3"`` when the study has several
    label fractions (``with_fraction``); ``regime_title_text`` is already a title (``regime_title``)."""
    return f"{fraction_title(label_fraction)}, {regime_title_text}" if with_fraction else regime_title_text


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.removeprefix("test_").replace("_", " "))


REFERENCE_TITLES = {
    "constant": "a constant prediction",
    "chance": "chance",
    "majority": "the majority class",
    "identity": "the corrupted input (identity)",
    "meanfill": "a mean-colour fill",
    "biharmonic": "a biharmonic inpainter",
    "initial": "the encoder before the pretext phase",
}


PRETEXT_LABELS = {
    "pretext_mse": "MSE (angle/360)",
    "pretext_aad": "AAD (angle/360)",
    "pretext_aad_deg": "AAD (\u00b0)",
    "pretext_aad_circ": "circular AAD (angle/360)",
    "pretext_aad_circ_deg": "circular AAD (\u00b0)",
    "pretext_sd_deg": "SD (\u00b0)",
    "pretext_sd_circ_deg": "circular SD (\u00b0)",
    "pretext_accuracy": "4-way accuracy",
    "pretext_loss": "4-way loss",
    "pretext_mse_mean": "MSE (mean over images)",
    "pretext_mse_sd": "MSE (SD over images)",
    "pretext_ssim_mean": "SSIM (mean over images)",
    "pretext_ssim_sd": "SSIM (SD over images)",
    "pretext_region_mse": "MSE inside the corrupted region",
    "pretext_composite_mse": "MSE, composite (model fills the hole only)",
    "pretext_composite_ssim": "SSIM, composite",
}


# Short names of REFERENCE_TITLES for table cells (the captions say what each one is).
REFERENCE_SHORT = {"majority": "majority class", "meanfill": "mean fill"}


def titled(frame: pd.DataFrame, keys: tuple[str, ...] = ("regime", "arm")) -> pd.DataFrame:
    """``frame`` with ``regime_title`` after its ``regime`` column and ``arm_title`` after its ``arm`` column
    (of those in ``keys``, each only when that column is there), as the report's tables and CSV files show
    them."""
    out = frame.copy()
    for key, title, name in (("regime", regime_title, "regime_title"), ("arm", arm_title, "arm_title")):
        if key in keys and key in out.columns and name not in out.columns:
            out.insert(out.columns.get_loc(key) + 1, name, out[key].map(title))
    return out
