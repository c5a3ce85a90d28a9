"""Classification and pretext metrics on numpy arrays (paper section III; docs/STATS.md).

Every function is pure: numpy arrays in, a dict of Python floats out. Classification metrics are fractions
in [0, 1] (the report renders % and pp); a metric that is undefined for the given labels is `nan`, never a
silently chosen number, except F1 (see `classification_metrics`). Bad input raises `ValueError` naming
the argument and the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata
from skimage.metrics import structural_similarity

# Keras' `backend.epsilon()`: its cross-entropies clip probabilities to [EPS, 1 - EPS], so `loss` here
# matches the `val_loss` Keras logs for the same predictions (up to float32 rounding).
EPS = 1e-7

# scikit-image's default SSIM window; smaller images use the largest odd window that fits.
SSIM_WIN_SIZE = 7


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
    prob = _float_vector(p, "p", len(y))
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


def rotation_metrics(target01: Any, pred01: Any) -> dict[str, float]:
    """Angle-regression metrics (paper Table 2); angles scaled as angle / 360.

    Args:
        target01: `(N,)` true angles / 360, in [0, 1).
        pred01: `(N,)` predicted angles / 360, any finite value.

    Returns:
        mse: mean (pred - target)^2 in scaled units (not wrapped).
        aad, aad_deg: mean |pred - target| scaled, and times 360 in degrees (not wrapped: 359 deg vs
            1 deg counts 358 deg, as the paper's formula).
        aad_circ, aad_circ_deg: mean circular error min(d, 1 - d) with d = |(pred mod 1) - target|,
            in [0, 0.5] scaled (0-180 deg); predictions outside [0, 1) are first taken modulo 1, i.e.
            a prediction of 1.02 means 7.2 deg.
        sd_deg, sd_circ_deg: population SD (divide by N, the paper's formula) of the absolute error in
            degrees, plain and circular.
    """
    target = _float_vector(target01, "target01")
    pred = _float_vector(pred01, "pred01", len(target))
    if np.any((target < 0) | (target >= 1)):
        raise ValueError("target01 must be angle / 360 in [0, 1); divide degrees by 360 and wrap with % 1")
    abs_err = np.abs(pred - target)
    d = np.abs(np.mod(pred, 1.0) - target)
    circ_err = np.minimum(d, 1.0 - d)
    return {
        "mse": float(np.mean((pred - target) ** 2)),
        "aad": float(abs_err.mean()),
        "aad_deg": float(abs_err.mean() * 360),
        "aad_circ": float(circ_err.mean()),
        "aad_circ_deg": float(circ_err.mean() * 360),
        "sd_deg": float(np.std(abs_err * 360)),
        "sd_circ_deg": float(np.std(circ_err * 360)),
    }


def rotation4_metrics(labels: Any, probs: Any) -> dict[str, float]:
    """4-way rotation metrics.

    Args:
        labels: `(N,)` integer classes 0..3 (rotation by 90 * k degrees).
        probs: `(N, 4)` class probabilities (softmax output): finite, >= 0, rows summing to 1 (+-1e-3).

    Returns `accuracy` (argmax correct, fraction) and `loss` (mean cross-entropy in nats, computed as
    Keras' sparse categorical cross-entropy: probabilities clipped to [1e-7, 1 - 1e-7], rows renormalised).
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) == 0:
        raise ValueError(f"labels must be a non-empty (N,) array; got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) and np.all((lab >= 0) & (lab <= 3))):
        raise ValueError("labels must be integers in 0..3 (rotation by 90 * k degrees)")
    pr = np.asarray(probs, dtype=np.float64)
    if pr.shape != (len(lab), 4):
        raise ValueError(f"probs must have shape (N, 4) = {(len(lab), 4)}; got {pr.shape}")
    if not np.all(np.isfinite(pr)) or np.any(pr < 0) or np.any(np.abs(pr.sum(axis=1) - 1) > 1e-3):
        raise ValueError("probs must be finite probabilities, rows summing to 1; apply a softmax to logits")
    clipped = np.clip(pr, EPS, 1 - EPS)
    chosen = clipped[np.arange(len(lab)), lab] / clipped.sum(axis=1)
    return {
        "accuracy": float(np.mean(np.argmax(pr, axis=1) == lab)),
        "loss": float(-np.mean(np.log(chosen))),
    }


def image_metrics(originals: Any, reconstructions: Any) -> dict[str, float]:
    """Reconstruction metrics for the image tasks (paper Table 3), per image then mean and SD over images.

    Args:
        originals: uint8 `(N, S, S, 3)` images, S >= 3.
        reconstructions: same shape, uint8 or float on the 0-255 scale (de-processed model output),
            finite and within [0, 255] (clip first).

    Returns:
        mse_mean, mse_sd: per-image mean squared error over all pixels and channels on the 0-255 scale;
            mean and population SD (divide by N) over images.
        ssim_mean, ssim_sd: per-image `skimage.metrics.structural_similarity(channel_axis=-1,
            data_range=255)` (7x7 uniform window, or the largest odd window <= S for smaller images);
            mean and population SD over images.
    """
    orig = np.asarray(originals)
    if orig.dtype != np.uint8 or orig.ndim != 4 or orig.shape[-1] != 3 or len(orig) == 0:
        raise ValueError(
            f"originals must be a non-empty uint8 (N, S, S, 3) array; got {orig.dtype} {orig.shape}"
        )
    rec = np.asarray(reconstructions)
    if rec.shape != orig.shape:
        raise ValueError(f"reconstructions must have the shape of originals {orig.shape}; got {rec.shape}")
    if not (rec.dtype == np.uint8 or np.issubdtype(rec.dtype, np.floating)):
        raise ValueError(f"reconstructions must be uint8 or float on the 0-255 scale; got {rec.dtype}")
    rec = rec.astype(np.float64)
    if not np.all(np.isfinite(rec)) or rec.min() < 0 or rec.max() > 255:
        raise ValueError("reconstructions must be finite, in [0, 255]; de-process, then np.clip(x, 0, 255)")
    side = min(orig.shape[1], orig.shape[2])
    if side < 3:
        raise ValueError(f"images must be at least 3x3 pixels for SSIM; got {orig.shape[1:3]}")
    win_size = min(SSIM_WIN_SIZE, side if side % 2 else side - 1)
    ref = orig.astype(np.float64)
    mse = np.mean((ref - rec) ** 2, axis=(1, 2, 3))
    ssim = ssim_per_image(ref, rec, win_size)
    return {
        "mse_mean": float(mse.mean()),
        "mse_sd": float(mse.std()),
        "ssim_mean": float(ssim.mean()),
        "ssim_sd": float(ssim.std()),
    }


#: Pixels per mosaic in `ssim_per_image` (~12 float64 arrays of this size exist at once inside skimage).
MOSAIC_PIXELS = 2**20


def ssim_per_image(originals: np.ndarray, reconstructions: np.ndarray, win_size: int) -> np.ndarray:
    """`structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=win_size)` of every image pair,
    `(N, H, W, 3)` float64 each -> `(N,)`, from one skimage call per mosaic of images placed side by side.

    skimage averages its SSIM map over the pixels at least `(win_size - 1) // 2` from the border, whose
    windows lie inside the image; in a mosaic those pixels' windows lie inside their own tile, so each
    tile's interior mean is the image's SSIM (to rounding: the filters' running sums cross tiles). One call
    per ~1M pixels instead of one per image, channels first (contiguous): ~3x faster at 32 px.
    """
    n, h, w, c = originals.shape
    pad = (win_size - 1) // 2
    per_mosaic = max(1, MOSAIC_PIXELS // (h * w))
    out = []
    for start in range(0, n, per_mosaic):
        a, b = originals[start : start + per_mosaic], reconstructions[start : start + per_mosaic]
        k = len(a)

        def mosaic(x: np.ndarray) -> np.ndarray:  # (k, h, w, c) -> (c, h, k * w), each channel contiguous
            return np.ascontiguousarray(x.transpose(3, 1, 0, 2)).reshape(c, h, k * w)

        _, full = structural_similarity(
            mosaic(a), mosaic(b), channel_axis=0, data_range=255.0, win_size=win_size, full=True
        )
        interior = full.reshape(c, h, k, w)[:, pad : h - pad, :, pad : w - pad]
        out.append(interior.mean(axis=(0, 1, 3), dtype=np.float64))
    return np.concatenate(out)


def _binary_labels(y_true: Any, name: str) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"{name} must be a non-empty (N,) array of 0/1 labels; got shape {y.shape}")
    if not (y.dtype == bool or np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{name} must hold 0/1 labels; got dtype {y.dtype}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name} must hold only 0 (benign) and 1 (malignant); threshold or map labels first")
    return y.astype(np.int64)


def _float_vector(values: Any, name: str, n: int | None = None) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric (N,) array: {err}") from None
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"{name} must be a non-empty (N,) array; got shape {v.shape}; .ravel() an (N, 1)")
    if n is not None and len(v) != n:
        raise ValueError(f"{name} must have the same length as the labels/targets ({n}); got {len(v)}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite; got NaN or inf (did training diverge?)")
    return v


# --------------------------------------------------------------------------------------------------------
# Pretext references: what a learning-free predictor scores on the same test pairs (docs SSL.md). A metric
# alone cannot say whether a pretext learned anything; beside its reference it can.


def region_mse(originals: Any, images: Any, mask: Any) -> np.ndarray:
    """Per-image MSE inside `mask` on the 0-255 scale: `(N,)` float64.

    `originals`: uint8 `(N, S, S, 3)`; `images`: same shape, uint8 or float 0-255; `mask`: bool `(N, S, S)`,
    at least one True pixel per image (the hole, or the swapped pixels). Mean over masked pixels and channels.
    """
    orig = np.asarray(originals, np.float64)
    img = np.asarray(images, np.float64)
    m = np.asarray(mask, bool)
    if img.shape != orig.shape or m.shape != orig.shape[:3]:
        raise ValueError(
            f"region_mse: images {img.shape} and mask {m.shape} must match originals {orig.shape}"
        )
    counts = m.sum(axis=(1, 2))
    if np.any(counts == 0):
        raise ValueError("region_mse: every image needs at least one pixel in the mask")
    sq = ((orig - img) ** 2).mean(axis=-1)
    return (sq * m).sum(axis=(1, 2)) / counts


def composite(inputs: Any, outputs: Any, mask: Any) -> np.ndarray:
    """Inpainting composite: `outputs` inside `mask`, the visible `inputs` elsewhere; uint8 (N, S, S, 3)."""
    m = np.asarray(mask, bool)[..., None]
    return np.where(m, np.asarray(outputs), np.asarray(inputs)).astype(np.uint8)


def mean_fill(inputs: Any, mask: Any) -> np.ndarray:
    """Each image's hole (`mask` True) filled with the mean colour of its pixels outside the hole; uint8."""
    x = np.asarray(inputs)
    m = np.asarray(mask, bool)
    outside = (~m)[..., None]
    mean = (x * outside).sum(axis=(1, 2)) / np.maximum(outside.sum(axis=(1, 2)), 1)  # (N, 3)
    fill = np.broadcast_to(np.rint(mean)[:, None, None, :], x.shape)
    return np.where(m[..., None], fill, x).astype(np.uint8)


def biharmonic_fill(inputs: Any, mask: Any) -> np.ndarray:
    """Each image's hole filled by `skimage.restoration.inpaint_biharmonic` (a classical, learning-free
    inpainter; slow: ~0.1-1 s per image at 32-224 px, so callers bound the number of images); uint8."""
    from skimage.restoration import inpaint_biharmonic

    x = np.asarray(inputs)
    m = np.asarray(mask, bool)
    out = np.empty_like(x)
    for i in range(len(x)):
        filled = inpaint_biharmonic(x[i].astype(np.float64) / 255.0, m[i], channel_axis=-1)
        out[i] = np.rint(np.clip(filled, 0, 1) * 255)
    return out


def best_constant_rotation(target01: Any) -> dict[str, float]:
    """The best constant predictions of `rotation_metrics` on these targets (angle/360 in [0, 1)):
    `{"mse": ..., "aad": ..., "aad_circ": ...}` = the mean (MSE), the median (AAD) and the circular
    median searched on a 3600-point grid (circular AAD). Scored on the test targets themselves, the
    reference is optimistic, so a model that beats it beats every constant."""
    target = _float_vector(target01, "target01")
    grid = np.arange(3600) / 3600.0
    d = np.abs(grid[:, None] - target[None, :])
    circ = np.minimum(d, 1.0 - d).mean(axis=1)
    return {
        "mse": float(target.mean()),
        "aad": float(np.median(target)),
        "aad_circ": float(grid[circ.argmin()]),
    }
