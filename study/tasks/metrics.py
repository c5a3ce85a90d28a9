"""Pretext metrics on numpy arrays (paper section III; docs/STATS.md): the paper's tasks' and the two-view
tasks' (`contrastive_hits`, `alignment`, `uniformity`). The classification metrics of the fine-tune phase
are `study.train.metrics`.

Every function is pure: numpy arrays in, a dict of Python floats out (or per-image arrays). Bad input
raises `ValueError` naming the argument and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist
from scipy.special import logsumexp
from skimage.metrics import structural_similarity

# Keras' `backend.epsilon()`: its cross-entropies clip probabilities to [EPS, 1 - EPS], so `loss` here
# matches the `val_loss` Keras logs for the same predictions (up to float32 rounding).
EPS = 1e-7

# scikit-image's default SSIM window; smaller images use the largest odd window that fits.
SSIM_WIN_SIZE = 7


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
    target = float_vector(target01, "target01")
    pred = float_vector(pred01, "pred01", len(target))
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


def float_vector(values: Any, name: str, n: int | None = None) -> np.ndarray:
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
    target = float_vector(target01, "target01")
    grid = np.arange(3600) / 3600.0
    d = np.abs(grid[:, None] - target[None, :])
    circ = np.minimum(d, 1.0 - d).mean(axis=1)
    return {
        "mse": float(target.mean()),
        "aad": float(np.median(target)),
        "aad_circ": float(grid[circ.argmin()]),
    }


# --------------------------------------------------------------------------------------------------------
# Two-view tasks: on embeddings of two views per image (docs SSL.md "Did the pretext learn?").


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of float `(N, D)` scaled to unit length (a zero row stays zero); float64 `(N, D)`."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def contrastive_hits(e1: np.ndarray, e2: np.ndarray, group_size: int | None = None) -> np.ndarray:
    """Whether each view finds its positive: bool `(2M,)`, views 1 of the M scored images then views 2.

    `e1`, `e2`: embeddings `(N, D)` of the two views of N images (row i of each is image i). Images are
    scored in consecutive groups of `group_size` (None: one group of all N); with N >= `group_size`, the
    last N mod `group_size` images are left out (M = N - N mod G), so every anchor has the same 2G - 1
    candidates; with N < `group_size`, one group of all N. Anchor a hits when the cosine similarity to
    its positive is strictly larger than to every other view of its group (a tie is a miss, so a collapsed
    embedding scores 0, not chance).
    """
    a, b = np.asarray(e1, np.float64), np.asarray(e2, np.float64)
    if a.ndim != 2 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"e1 and e2 must be (N, D) arrays of the same shape with N >= 2; got {a.shape} and {b.shape}"
        )
    n = len(a)
    g = n if group_size is None or group_size > n else int(group_size)
    if g < 2:
        raise ValueError(f"group_size must be >= 2; got {group_size!r}; use e.g. the training batch size")
    m = n - n % g
    hits1, hits2 = [], []
    for start in range(0, m, g):
        z = l2_normalize(np.concatenate([a[start : start + g], b[start : start + g]]))
        sim = z @ z.T
        np.fill_diagonal(sim, -np.inf)
        partner = np.concatenate([np.arange(g, 2 * g), np.arange(g)])
        pos = sim[np.arange(2 * g), partner]
        sim[np.arange(2 * g), partner] = -np.inf
        hit = pos > sim.max(axis=1)
        hits1.append(hit[:g])
        hits2.append(hit[g:])
    return np.concatenate(hits1 + hits2)


def alignment(e1: np.ndarray, e2: np.ndarray, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment `E ||f(x) - f(y)||^alpha` over positive pairs, on L2-normalised rows of
    `e1`, `e2` `(N, D)` (0 = the two views coincide; 4 = opposite; lower is better)."""
    d = l2_normalize(e1) - l2_normalize(e2)
    return float(np.mean(np.linalg.norm(d, axis=1) ** alpha))


def uniformity(e: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola's uniformity `log E exp(-t ||f(x) - f(y)||^2)` over all pairs of distinct rows of
    `e (N, D)`, L2-normalised (0 = all equal, the worst; about -2t for spread-out points in high dimension;
    lower is better). `scipy.spatial.distance.pdist` for the pair distances; `scipy.special.logsumexp`."""
    d2 = pdist(l2_normalize(e), "sqeuclidean")
    return float(logsumexp(-t * d2) - math.log(len(d2)))
