"""Linear probe: how much of the label a frozen encoder's pooled features already carry (docs SSL.md).

The standard measure of what a self-supervised encoder learned (SimCLR, BYOL, solo-learn and VISSL report it
next to fine-tuning): freeze the encoder, globally average-pool its output, fit an L2-regularised logistic
regression on the labelled training images, choose the regularisation on the validation split, and score
test AUC. For the baseline arm the same probe on the encoder as initialised (random, or ImageNet weights in the
`paper` preset) gives the reference, so "probe AUC of the pretext encoder vs the initial one, paired by seed"
separates "the encoder learned useful features" from "the pretext weights are a better starting point for
fine-tuning".

Pure numpy / scikit-learn (`LogisticRegression`, lbfgs: deterministic); no TensorFlow here.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from study.train.metrics import classification_metrics

#: Inverse regularisation strengths tried, weakest regularisation last.
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))
MAX_ITER = 500


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    c_grid: tuple[float, ...] = C_GRID,
) -> dict[str, float]:
    """Fit the probe on `train`, choose C on `val` AUC, score `test`.

    Each pair is `(features (N, D) float, labels (N,) 0/1)`. Features are standardised with the training
    mean and SD (constant features are left at 0). Among equal validation AUCs the smaller C (stronger
    regularisation) wins. Returns `probe_auc` (test), `probe_val_auc`, `probe_c`; NaN AUCs when the
    training labels hold one class only.
    """
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    ytr, yva, yte = (np.asarray(y).astype(int).reshape(-1) for y in (ytr, yva, yte))
    if len(np.unique(ytr)) < 2:
        return {"probe_auc": float("nan"), "probe_val_auc": float("nan"), "probe_c": float("nan")}
    scaler = StandardScaler().fit(np.asarray(xtr, np.float64))
    xtr, xva, xte = (scaler.transform(np.asarray(x, np.float64)) for x in (xtr, xva, xte))
    best: tuple[float, float, LogisticRegression] | None = None
    for c in c_grid:
        model = _fit(xtr, ytr, c)
        auc = classification_metrics(yva, model.predict_proba(xva)[:, 1])["auc"]
        score = auc if np.isfinite(auc) else -np.inf
        if best is None or score > best[0]:
            best = (score, c, model)
    assert best is not None
    val_auc, c, model = best
    return {
        "probe_auc": classification_metrics(yte, model.predict_proba(xte)[:, 1])["auc"],
        "probe_val_auc": float(val_auc) if np.isfinite(val_auc) else float("nan"),
        "probe_c": c,
    }


def _fit(x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
    with warnings.catch_warnings():
        # A probe that has not fully converged after MAX_ITER lbfgs steps is still a valid, if weaker, probe.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=MAX_ITER).fit(x, y)
