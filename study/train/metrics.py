"""Classification metrics of the fine-tune phase and the linear probe, on numpy arrays (paper section III;
docs/STATS.md).

Pure: labels and probabilities in, a dict of Python floats out. Metrics are fractions in [0, 1] (the report
renders % and pp); a metric that is undefined for the given labels is `nan`, never a silently chosen
number, except F1 (see `classification_metrics`). Bad input raises `ValueError` naming the argument and the
fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from study.tasks.metrics import EPS, float_vector


def classification_metrics(y_true: Any, p: Any) -> dict[str, float]:
    """Binary melanoma metrics from labels and predicted malignant probabilities.

    Args:
        y_true: `(N,)` labels, 0 = benign, 1 = malignant (integer or bool; floats must be exactly 0/1).
        p: `(N,)` predicted probability of malignant, finite, in [0, 1].

    Returns a dict of fractions in [0, 1] (`loss` excepted):
        soft_accuracy: the paper's accuracy, 1 - mean |p - y| (no threshold).
        accuracy: share of correct hard predictions, malignant when p > 0.5 (Keras' BinaryAccuracy rule).
        balanced_accuracy: (sensitivity + specificity) / 2; nan when one class is absent.
        auc: ROC AUC as the Mann-Whitney statistic P(p_malignant > p_benign) + P(tie) / 2 (average ranks);
            nan when one class is absent.
        sensitivity: malignant recall TP / (TP + FN); nan without malignant images.
        specificity: benign recall TN / (TN + FP); nan without benign images.
        f1: 2TP / (2TP + FP + FN); 0 when that is 0/0 (no malignant images and none predicted), as
            scikit-learn's `zero_division=0`, so a classifier that never finds a melanoma scores 0.
        loss: mean binary cross-entropy in nats, p clipped to [1e-7, 1 - 1e-7] as Keras does.
    """
    y = _binary_labels(y_true, "y_true")
    prob = float_vector(p, "p", len(y))
    if np.any((prob < 0) | (prob > 1)):
        raise ValueError("p must be probabilities in [0, 1]; apply a sigmoid to logits first")
    positive = y == 1
    predicted = prob > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    tp = int(np.sum(predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    fp, fn = n_neg - tn, n_pos - tp
    sensitivity = tp / n_pos if n_pos else float("nan")
    specificity = tn / n_neg if n_neg else float("nan")
    clipped = np.clip(prob, EPS, 1 - EPS)
    loss = -np.mean(np.where(positive, np.log(clipped), np.log1p(-clipped)))
    return {
        "soft_accuracy": float(1.0 - np.mean(np.abs(prob - y))),
        "accuracy": (tp + tn) / len(y),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "auc": _rank_auc(prob, positive, n_pos, n_neg),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0,
        "loss": float(loss),
    }


def _rank_auc(scores: np.ndarray, positive: np.ndarray, n_pos: int, n_neg: int) -> float:
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U of the positives; average ranks give ties half credit.
    ranks = rankdata(scores, method="average")
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _binary_labels(y_true: Any, name: str) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"{name} must be a non-empty (N,) array of 0/1 labels; got shape {y.shape}")
    if not (y.dtype == bool or np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{name} must hold 0/1 labels; got dtype {y.dtype}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name} must hold only 0 (benign) and 1 (malignant); threshold or map labels first")
    return y.astype(np.int64)
