"""Did the pretext learn? Its test metrics beside what learning-free predictors score on the same test pairs.

A pretext metric alone says little: a circular AAD of 91 degrees, or an MSE of 1,500, reads like a result
until a constant guess scores 90 degrees, or the corrupted input itself scores 1,400. For every pretext phase,
`pretext_scores` computes the model's metrics and, on the very same test pairs (same corruptions), the
references that use no learning (docs SSL.md):

| reference   | for           | what it predicts                                                          |
|-------------|---------------|---------------------------------------------------------------------------|
| `constant`  | rotation      | the best constant angle on these test targets (mean / median / circular)  |
| `chance`    | rotation4     | a uniform guess: accuracy 0.25                                            |
| `majority`  | rotation4     | always the most frequent class of these test targets                      |
| `identity`  | image tasks   | the corrupted input itself (hole left black; swapped patches left)        |
| `meanfill`  | missing patch | the hole filled with the image's mean colour outside the hole             |
| `biharmonic`| missing patch | `skimage.restoration.inpaint_biharmonic` (classical; a bounded subsample) |

The verdict, `learned`, is decided by one headline metric per task (`PretextTask.headline`): rotation by the
circular AAD in degrees, rotation4 by accuracy, missing patch by the MSE inside the hole (`region_mse`;
outside it the input already is the answer), corruption removal by the whole-image MSE (the paper's metric;
the swaps move ~90 % of the pixels at the paper's settings). `learned` is True when the model is better than
the best *trivial* reference (`TRIVIAL`) on that metric, and significantly so over the test images: a
one-sided paired Wilcoxon signed-rank test of the per-image errors (model vs reference; for rotation4, per-image
correctness) at `LEARNED_ALPHA` (`learned_p`). A mean that beats the reference by a hair (e.g. 89.7 vs 90.0
degrees) is test noise, not learning. The classical inpainter is a stronger bar, reported beside it
(`beats_classical`), not part of the verdict: beating it is a finding, not a precondition for having learned
something. The constant and the majority class are the best ones on the test targets themselves: no constant
predictor can beat them, so a model that collapsed to a constant (the usual failure) is never called learned.
Chosen in-sample they are optimistic: the best constant of 200 uniform angles scores about 86 degrees, not the
90 a constant fitted elsewhere scores (fitted on the validation pairs instead, a near-constant model beat it
"significantly" on one demo seed, only because its constant sat nearer the test sample's circular median).

Keys of the returned dict (all floats unless noted; they become `pretext_<key>` columns of results.csv):
model metrics (`mse_mean`, `ssim_mean`, ..., `region_mse`, `composite_mse`, `composite_ssim`); per reference
`ref_<name>_<metric>`; best trivial reference per metric `ref_<metric>`; `ref_name` (str, best on the
headline); `headline` (str); `ratio` (model / best reference on the headline); `learned_p`; `learned` (bool);
for missing patch `ref_biharmonic_region_mse`, `biharmonic_subset_region_mse` (the model on the same images),
`biharmonic_n`, `biharmonic_seconds`, `beats_classical` (bool).

Tasks with a two-view step (`study.tasks.steps.TwoViewStep`) are judged by `contrastive_scores` instead:
contrastive top-1 of the pooled encoder features against chance and against the encoder before the phase.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy.stats import binomtest

import study.tasks.metrics as metrics

TRIVIAL = ("constant", "chance", "majority", "identity", "meanfill")
CLASSICAL = ("biharmonic",)
#: Test images the biharmonic inpainter fills (~0.05 s each at 32 px, ~1 s at 224 px).
BIHARMONIC_MAX_IMAGES = 32
#: One-sided level of the per-image paired test behind `learned` (per pretext phase, not a study-level claim).
LEARNED_ALPHA = 0.05
#: Metrics where a larger value is better; every other scored metric is an error (lower is better).
HIGHER_IS_BETTER = frozenset({"accuracy", "ssim_mean", "composite_ssim"})


def better(a: float, b: float, metric: str) -> bool:
    """True when value `a` is strictly better than `b` on `metric`."""
    return a > b if metric in HIGHER_IS_BETTER else a < b


def pretext_scores(
    task: Any,
    targets: np.ndarray,
    predictions: np.ndarray,
    inputs: np.ndarray | None = None,
    region: np.ndarray | None = None,
    *,
    biharmonic_max: int = BIHARMONIC_MAX_IMAGES,
) -> dict[str, Any]:
    """Model metrics, references and the learned verdict for one pretext phase's test pairs.

    `task`: a `study.tasks.registry.PretextTask`. By head:
    - `angle`: `targets` `(N,)` angle/360 in [0, 1), `predictions` `(N,)` any finite value.
    - `rotation4`: `targets` `(N,)` int 0..3, `predictions` `(N, 4)` probabilities.
    - `image`: `targets` uint8 `(N, S, S, 3)` originals, `predictions` uint8 reconstructions (de-processed),
      `inputs` the corrupted uint8 inputs, `region` bool `(N, S, S)` the corrupted pixels (`task.region`).
    """
    if task.head == "angle":
        target = np.asarray(targets, np.float64)
        scores, per_image = _rotation_scores(target, np.asarray(predictions, np.float64), target)
    elif task.head == "rotation4":
        labels = np.asarray(targets)
        scores, per_image = _rotation4_scores(labels, np.asarray(predictions, np.float64), labels)
    else:
        if inputs is None or region is None:
            raise ValueError(
                f"task {task.name!r}: image tasks need the test inputs and their corrupted region"
            )
        scores, per_image = _image_scores(task, targets, predictions, inputs, region, biharmonic_max)
    return {**scores, **verdict(scores, task.headline, per_image)}


def verdict(
    scores: dict[str, Any], headline: str, per_image: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Best trivial reference per metric, and the headline's verdict.

    `scores`: model metrics `<m>` and references `ref_<name>_<m>`. `per_image`: the headline metric per
    test image, `{"model": (N,), "<ref name>": (N,)}` (a reference missing there, such as chance, is a
    constant and is compared by the mean alone). Returns `ref_<m>` for every model metric with a trivial
    reference, `headline`, `ref_name`, `ratio`, `learned_p` (one-sided paired Wilcoxon p over test images,
    NaN without per-image values) and `learned`.
    """
    out: dict[str, Any] = {"headline": headline}
    for metric in [k for k in scores if not k.startswith("ref_")]:
        refs = {n: scores[f"ref_{n}_{metric}"] for n in TRIVIAL if f"ref_{n}_{metric}" in scores}
        if not refs:
            continue
        best = max(refs, key=lambda n: refs[n]) if metric in HIGHER_IS_BETTER else min(refs, key=refs.get)
        out[f"ref_{metric}"] = float(refs[best])
        if metric == headline:
            out["ref_name"] = best
    if f"ref_{headline}" not in out:
        raise ValueError(f"headline metric {headline!r} has no trivial reference among {sorted(scores)}")
    model, ref = float(scores[headline]), out[f"ref_{headline}"]
    out["ratio"] = model / ref if ref else float("nan")
    p = float("nan")
    if per_image is not None and out["ref_name"] in per_image:
        p = paired_one_sided_p(per_image["model"], per_image[out["ref_name"]], headline)
    out["learned_p"] = p
    out["learned"] = bool(better(model, ref, headline) and (not np.isfinite(p) or p < LEARNED_ALPHA))
    return out


def paired_one_sided_p(model: np.ndarray, reference: np.ndarray, metric: str) -> float:
    """One-sided p that the model's per-image values `(N,)` are better than the reference's on `metric`:
    `scipy.stats.wilcoxon` on the paired differences (zero differences dropped; 1.0 when all are zero)."""
    from scipy.stats import wilcoxon

    d = np.asarray(model, np.float64) - np.asarray(reference, np.float64)
    if not np.any(d != 0):
        return 1.0
    alternative = "greater" if metric in HIGHER_IS_BETTER else "less"
    return float(wilcoxon(d, alternative=alternative, zero_method="wilcox").pvalue)


def _circular_error_deg(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    d = np.abs(np.mod(pred, 1.0) - target)
    return np.minimum(d, 1.0 - d) * 360.0


def _rotation_scores(
    target: np.ndarray, pred: np.ndarray, fit: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scores = metrics.rotation_metrics(target, pred)
    const = metrics.best_constant_rotation(fit)
    for name in ("mse", "aad", "aad_circ"):
        ref = metrics.rotation_metrics(target, np.full_like(target, const[name]))
        scores[f"ref_constant_{name}"] = ref[name]
        if name != "mse":
            scores[f"ref_constant_{name}_deg"] = ref[f"{name}_deg"]
    per_image = {
        "model": _circular_error_deg(target, pred),
        "constant": _circular_error_deg(target, np.full_like(target, const["aad_circ"])),
    }
    return scores, per_image


def _rotation4_scores(
    labels: np.ndarray, probs: np.ndarray, fit: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scores = metrics.rotation4_metrics(labels, probs)
    majority = int(np.bincount(fit.astype(np.int64), minlength=4).argmax())
    scores["ref_chance_accuracy"] = 0.25
    scores["ref_majority_accuracy"] = float(np.mean(labels == majority))
    per_image = {
        "model": (np.argmax(probs, axis=1) == labels).astype(np.float64),
        "majority": (labels == majority).astype(np.float64),
    }
    return scores, per_image


def _image_scores(
    task: Any, originals: np.ndarray, outputs: np.ndarray, inputs: np.ndarray, region: np.ndarray, n_bh: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    headline = task.headline
    per_image: dict[str, np.ndarray] = {}
    ref64 = np.asarray(originals, np.float64)

    def summary(name: str, images: np.ndarray) -> dict[str, float]:
        m = metrics.image_metrics(originals, images)
        region_err = metrics.region_mse(originals, images, region)
        whole_err = ((ref64 - np.asarray(images, np.float64)) ** 2).mean(axis=(1, 2, 3))
        per_image[name] = {"region_mse": region_err, "mse_mean": whole_err}.get(headline, whole_err)
        return {**m, "region_mse": float(region_err.mean())}

    scores: dict[str, float] = summary("model", outputs)
    candidates = {"identity": inputs}
    if "meanfill" in task.references:
        candidates["meanfill"] = metrics.mean_fill(inputs, region)
    for name, images in candidates.items():
        if name in task.references:
            ref = summary(name, images)
            scores.update({f"ref_{name}_{k}": ref[k] for k in ("mse_mean", "ssim_mean", "region_mse")})
    if "meanfill" in task.references:  # an inpainting task: the composite keeps the visible pixels
        comp = metrics.image_metrics(originals, metrics.composite(inputs, outputs, region))
        scores["composite_mse"], scores["composite_ssim"] = comp["mse_mean"], comp["ssim_mean"]
    if "biharmonic" in task.references and n_bh > 0:
        n = min(n_bh, len(originals))
        started = time.perf_counter()
        filled = metrics.biharmonic_fill(inputs[:n], region[:n])
        scores["biharmonic_seconds"] = time.perf_counter() - started
        scores["biharmonic_n"] = float(n)
        ref = float(metrics.region_mse(originals[:n], filled, region[:n]).mean())
        model = float(metrics.region_mse(originals[:n], outputs[:n], region[:n]).mean())
        scores["ref_biharmonic_region_mse"] = ref
        scores["biharmonic_subset_region_mse"] = model
        scores["beats_classical"] = bool(model < ref)
    return scores, per_image


# --------------------------------------------------------------------------------------------------------
# Two-view tasks (`study.tasks.steps.TwoViewStep`): the encoder's features beside chance and beside the
# encoder before the phase.


def contrastive_scores(
    e1: np.ndarray,
    e2: np.ndarray,
    init1: np.ndarray | None = None,
    init2: np.ndarray | None = None,
    *,
    group_size: int | None = None,
    alpha: float = LEARNED_ALPHA,
) -> dict[str, Any]:
    """Did the encoder learn? Metrics of two views' embeddings beside learning-free references.

    `e1`, `e2`: `(N, D)` embeddings of the two views of N test images after training; `init1`, `init2`:
    the same views through the encoder before training (optional; `(N, D')`). `group_size`: see
    `metrics.contrastive_hits` (the training batch size makes chance 1/(2B - 1)).

    Returns, shaped as `study.tasks.references.pretext_scores` (floats unless noted): `top1` (hits over all 2M
    anchors), `align`, `uniform` (mean of both views' uniformity); references `ref_chance_top1` =
    1/(2G - 1) and, with `init*`, `ref_initial_top1`, `ref_initial_align`, `ref_initial_uniform`; best
    reference per metric `ref_top1` (the higher of chance and initial), `ref_align`, `ref_uniform`
    (initial); `headline` (str, "top1"), `ref_name` (str, "chance" or "initial"), `ratio` (top1 / ref_top1),
    `learned_p`, `learned` (bool), `n_images` (M), `group_size` (G).

    `learned`: `top1` beats the best reference and a one-sided exact test says so at `alpha` on the M
    view-1 anchors (one per image: the two anchors of a pair are not independent): against chance
    `scipy.stats.binomtest(hits, M, 1/(2G - 1), "greater")`; against the initial encoder the exact
    McNemar test on the images where the two disagree (`binomtest(model-only hits, discordant, 0.5,
    "greater")`). Alignment and uniformity have no verdict (alignment alone is perfect for a collapsed
    encoder; uniformity alone for a random one).
    """
    hits = metrics.contrastive_hits(e1, e2, group_size)
    m = len(hits) // 2
    n = len(np.asarray(e1))
    g = n if group_size is None or group_size > n else int(group_size)
    chance = 1.0 / (2 * g - 1)
    scores: dict[str, Any] = {
        "top1": float(hits.mean()),
        "align": metrics.alignment(e1, e2),
        "uniform": 0.5 * (metrics.uniformity(e1) + metrics.uniformity(e2)),
        "ref_chance_top1": chance,
    }
    refs = {"chance": chance}
    p_values = {"chance": float(binomtest(int(hits[:m].sum()), m, chance, alternative="greater").pvalue)}
    if init1 is not None and init2 is not None:
        init_hits = metrics.contrastive_hits(init1, init2, group_size)
        scores["ref_initial_top1"] = float(init_hits.mean())
        scores["ref_initial_align"] = metrics.alignment(init1, init2)
        scores["ref_initial_uniform"] = 0.5 * (metrics.uniformity(init1) + metrics.uniformity(init2))
        scores["ref_align"] = scores["ref_initial_align"]
        scores["ref_uniform"] = scores["ref_initial_uniform"]
        refs["initial"] = scores["ref_initial_top1"]
        only_model = int(np.sum(hits[:m] & ~init_hits[:m]))
        discordant = only_model + int(np.sum(~hits[:m] & init_hits[:m]))
        p_values["initial"] = (
            float(binomtest(only_model, discordant, 0.5, alternative="greater").pvalue) if discordant else 1.0
        )
    best = max(refs, key=lambda k: (refs[k], k == "initial"))  # the initial encoder wins a tie with chance
    scores.update(
        headline="top1",
        ref_top1=refs[best],
        ref_name=best,
        ratio=scores["top1"] / refs[best] if refs[best] else float("nan"),
        learned_p=p_values[best],
        n_images=float(m),
        group_size=float(g),
    )
    scores["learned"] = bool(scores["top1"] > refs[best] and p_values[best] < alpha)
    return scores
