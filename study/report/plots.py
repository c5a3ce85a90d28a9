"""Figures for the report. Draw only: every function takes precomputed numbers (from ``analysis``) and
returns a matplotlib ``Figure``; nothing here computes a statistic.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): no global figure registry to leak
memory or depend on a GUI backend; ``save_figure`` renders with Agg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from study.analysis import BASELINE, FRACTION_METRICS, base_task, metric_direction, orientation
from study.io.files import write_replacing
from study.report.labels import arm_title, fraction_title
from study.tasks import registry as pretext

# One colour per pretext task (`PretextTask.color`), shared by every figure, so an arm is recognisable across
# the report; the baseline's is grey.
BASELINE_COLOR = "#4d4d4d"
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#d62728", "#7f7f7f")


def arm_color(arm: str) -> str:
    """Colour of an arm: its task's colour; variants and tasks without one get a stable extra colour."""
    task = base_task(arm)
    if arm == BASELINE:
        return BASELINE_COLOR
    registered = pretext.TASKS.get(task)
    if arm == task and registered is not None and registered.color is not None:
        return registered.color
    return _EXTRA_COLORS[sum(map(ord, arm)) % len(_EXTRA_COLORS)]


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (parents created) and return the path; a symlink at ``path`` is replaced, never
    written through (``write_replacing``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_replacing(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def forest_plot(
    comparisons: pd.DataFrame,
    xlabel: str,
    scale: float | None = None,
    alpha: float = 0.05,
    margin: float | None = None,
) -> Figure:
    """Paired differences (arm - baseline), one row per comparison, grouped by regime: the Hodges-Lehmann
    estimate (dot) with its exact signed-rank CI (bar; the interval of the headline test) and the mean
    (cross). The title names both and the interval's level.

    Direction (``analysis.metric_direction`` of the rows' metric): for a metric with one, the x-axis label
    gets "favours baseline <- -> favours arm", and a lower-is-better metric is drawn as baseline - arm (said
    in the label) so that right favours the arm; a metric without one (stop epoch) is drawn as arm -
    baseline with no side named. ``margin``: a shaded band +-margin (metric units, as the differences; drawn
    scaled), e.g. the equivalence margin; None draws none.

    ``comparisons``: rows of ``tables.comparison_table`` (uses ``regime_title, arm, arm_title, metric,
    hl_estimate, hl_ci_low, hl_ci_high, mean_diff, p_holm, significant``). ``scale`` converts units for
    display; default from the metric: 100 for fractions (percentage points), 1 for metrics in their own
    units (epochs, losses). Filled markers: Holm p < alpha.
    """
    metric = str(comparisons["metric"].iloc[0]) if len(comparisons) else ""
    if scale is None:
        scale = 100.0 if metric in FRACTION_METRICS else 1.0
    direction, sign = metric_direction(metric), orientation(metric)
    xscale = scale * sign  # right = favours the arm (the arm higher, without a direction)
    groups = list(dict.fromkeys(comparisons["regime_title"]))
    n_rows = len(comparisons) + len(groups)
    fig = Figure(figsize=(8.0, 1.1 + 0.38 * n_rows))
    ax = fig.add_subplot()
    y = 0.0
    ticks, labels = [], []
    for g in groups:
        ticks.append(y)
        labels.append(g)
        y -= 1
        for r in comparisons[comparisons["regime_title"] == g].itertuples(index=False):
            c = arm_color(r.arm)
            if np.isfinite(r.hl_ci_low):
                ax.plot([r.hl_ci_low * xscale, r.hl_ci_high * xscale], [y, y], color=c, lw=2)
            ax.plot(
                [r.hl_estimate * xscale], [y], "o", ms=7, color=c, mfc=c if r.significant else "white", mew=2
            )
            ax.plot([r.mean_diff * xscale], [y], "x", ms=6, color="#333333", mew=1.2)
            ax.annotate(
                f"Holm {_fmt_p(r.p_holm)}",
                (1.01, y),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize=8,
                color="black" if r.significant else "#666666",
            )
            ticks.append(y)
            labels.append(f"  {r.arm_title}")
            y -= 1
    ax.axvline(0, color="black", lw=0.8, ls="--")
    if margin is not None and np.isfinite(margin):
        ax.axvspan(-abs(margin) * scale, abs(margin) * scale, color="#2ca02c", alpha=0.12, lw=0, zorder=0)
    ax.set_yticks(ticks, labels, fontsize=9)
    for tick, label in zip(ax.get_yticklabels(), labels):
        if not label.startswith("  "):
            tick.set_fontweight("bold")
    ax.set_ylim(y + 0.5, 0.5)
    if sign < 0:
        xlabel += ", drawn as baseline \u2212 arm (lower is better)"
    if direction:
        xlabel += "\n\u2190 favours baseline        favours arm \u2192"
    ax.set_xlabel(xlabel)
    ax.set_title(
        f"Paired difference vs baseline: Hodges\u2013Lehmann estimate (dot) with its {round((1 - alpha) * 100)} % "
        f"exact signed-rank CI (bar),\nmean (\u00d7); intervals not adjusted for multiplicity; "
        f"filled: Holm p < {alpha:g}",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    return fig


def paired_seeds_plot(
    panels: Sequence[tuple[str, np.ndarray, Sequence[str], Sequence[float]]],
    ylabel: str,
    scale: float = 100.0,
    ncols: int | None = None,
) -> Figure:
    """Per-seed values joined across arms, one panel per regime (per label fraction and regime).

    ``panels``: ``(title, matrix (n_seeds, n_arms), arms, means (n_arms,))``, baseline first; NaN cells
    (excluded trials) are left as gaps. Grey lines join one seed's arms (the pairing); black bars are the
    given arm means (``tables.summarise``). ``ncols``: panels per row (default all in one row; a study of
    several label fractions passes its regime count: one row per fraction).
    """
    k = max(1, len(panels))
    cols = k if ncols is None else max(1, min(ncols, k))
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(min(4.2 * cols, 14), 4.2 * rows))
    grid = fig.subplots(rows, cols, sharey=True, squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, matrix, arms, means) in zip(axes, panels):
        m = np.asarray(matrix, dtype=float) * scale
        x = np.arange(len(arms))
        for row in m:
            ax.plot(x, row, color="#999999", lw=0.8, alpha=0.6, zorder=1)
        for j, (arm, mean) in enumerate(zip(arms, means)):
            ax.scatter(np.full(m.shape[0], j), m[:, j], s=14, color=arm_color(arm), zorder=2)
            if np.isfinite(mean):
                ax.plot([j - 0.25, j + 0.25], [mean * scale] * 2, color="black", lw=2.5, zorder=3)
        ax.set_xticks(x, [arm_title(a) for a in arms], rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for row in grid:
        row[0].set_ylabel(ylabel)
    fig.suptitle("Per-seed results (lines join the arms of one seed; bars: means)", fontsize=10)
    fig.tight_layout()
    return fig


def learning_curves_plot(curves: pd.DataFrame, panels: Sequence[tuple[str, str]]) -> Figure:
    """Mean +- SD over seeds per epoch and arm. ``curves``: ``tables.learning_curves`` output;
    ``panels``: ``(metric, axis label)`` pairs, one subplot each (metrics absent from ``curves`` are skipped);
    one row of them per label fraction when ``curves`` has several (``label_fraction`` column)."""
    panels = [(m, lab) for m, lab in panels if (curves["metric"] == m).any()]
    fractions = sorted(curves["label_fraction"].unique()) if "label_fraction" in curves else [None]
    several = len(fractions) > 1
    fig = Figure(figsize=(5.2 * max(1, len(panels)), 3.8 * len(fractions)))
    grid = fig.subplots(len(fractions), max(1, len(panels)), squeeze=False)
    for axes, f in zip(grid, fractions):
        at_f = curves if f is None else curves[curves["label_fraction"] == f]
        _curve_row(axes, at_f, panels, f"{fraction_title(f)}: " if several else "")
    grid[0, 0].legend(fontsize=8)
    fig.suptitle("Learning curves (mean \u00b1 SD over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def _curve_row(
    axes: Sequence[Any], curves: pd.DataFrame, panels: Sequence[tuple[str, str]], prefix: str
) -> None:
    """One row of ``learning_curves_plot``: a panel per ``(metric, label)``; ``prefix`` titles the row."""
    for ax, (metric, label) in zip(axes, panels):
        sub = curves[curves["metric"] == metric]
        if prefix:
            ax.set_title(prefix.removesuffix(": "), fontsize=9, loc="left")
        for arm in dict.fromkeys(sub["arm"]):
            g = sub[sub["arm"] == arm].sort_values("epoch")
            c = arm_color(arm)
            ax.plot(g["epoch"], g["mean"], color=c, label=arm_title(arm), lw=1.6)
            sd = g["sd"].fillna(0).to_numpy(dtype=float)
            ax.fill_between(g["epoch"], g["mean"] - sd, g["mean"] + sd, color=c, alpha=0.15, lw=0)
        ax.set_xlabel("fine-tune epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)


def label_efficiency_plot(
    levels: pd.DataFrame,
    differences: pd.DataFrame | None,
    ylabel: str,
    dlabel: str,
    scale: float = 100.0,
    alpha: float = 0.05,
) -> Figure:
    """A metric vs the label fraction, one column of panels per early-stopping regime, log x-axis with the
    fractions as ticks.

    Top row: each arm's mean over seeds with its t-interval, one line per arm (baseline included).
    ``levels``: ``tables.label_efficiency`` rows (``label_fraction, regime, regime_title, arm, mean,
    ci_low, ci_high``). Bottom row (when ``differences`` is given: ``tables.comparison_table`` rows):
    each SSL arm's paired difference from the baseline, Hodges-Lehmann estimate with its exact signed-rank
    CI, filled when Holm p < ``alpha``. Arms are shifted slightly along x so their bars do not overlap.
    ``scale``: 100 for fractions (% and percentage points), 1 for metrics in their own units.
    """
    regimes = list(dict.fromkeys(levels["regime"]))
    fractions = sorted(levels["label_fraction"].unique())
    arms = list(dict.fromkeys(levels["arm"]))
    n_rows = 2 if differences is not None and len(differences) else 1
    cols = max(1, len(regimes))
    fig = Figure(figsize=(min(4.4 * cols, 14), 3.6 * n_rows + 0.4))
    axes = fig.subplots(n_rows, cols, squeeze=False, sharex=True, sharey="row")
    # Multiplicative offsets: equal steps on the log axis, centred on each fraction.
    dodge = {a: 1.06 ** (i - (len(arms) - 1) / 2) for i, a in enumerate(arms)}
    for j, regime in enumerate(regimes):
        sub = levels[levels["regime"] == regime]
        _level_panel(axes[0, j], sub, arms, dodge, scale)
        axes[0, j].set_title(str(sub["regime_title"].iloc[0]) if len(sub) else regime, fontsize=10)
        if n_rows == 2:
            _difference_panel(
                axes[1, j], differences[differences["regime"] == regime], arms[1:], dodge, scale
            )
    for ax in axes.ravel():
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{100 * f:.3g} %" for f in fractions])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("label fraction (share of training labels, log scale)")
    axes[0, 0].set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=8)
    if n_rows == 2:
        axes[1, 0].set_ylabel(dlabel)
    level = round((1 - alpha) * 100)
    fig.suptitle(
        f"Label efficiency: mean over seeds with {level} % t-interval (top)"
        + (
            f"; paired difference vs baseline, Hodges\u2013Lehmann with {level} % signed-rank CI, "
            f"filled: Holm p < {alpha:g} (bottom)"
            if n_rows == 2
            else ""
        ),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _level_panel(
    ax: Any, sub: pd.DataFrame, arms: Sequence[str], dodge: Mapping[str, float], scale: float
) -> None:
    """One regime's top panel: each arm's mean with its t-interval per label fraction."""
    for arm in arms:
        g = sub[sub["arm"] == arm].sort_values("label_fraction")
        if g.empty:
            continue
        x = g["label_fraction"].to_numpy(dtype=float) * dodge[arm]
        m = g["mean"].to_numpy(dtype=float) * scale
        lo, hi = g["ci_low"].to_numpy(dtype=float) * scale, g["ci_high"].to_numpy(dtype=float) * scale
        err = np.vstack([m - lo, hi - m])
        c = arm_color(arm)
        ax.errorbar(
            x,
            m,
            yerr=np.where(np.isfinite(err), err, 0),
            color=c,
            marker="o",
            ms=4,
            lw=1.5,
            capsize=3,
            label=arm_title(arm),
        )


def _difference_panel(
    dax: Any, d: pd.DataFrame, arms: Sequence[str], dodge: Mapping[str, float], scale: float
) -> None:
    """One regime's bottom panel: each SSL arm's Hodges-Lehmann difference with its CI, filled when
    significant, and the zero line."""
    for arm in arms:
        g = d[d["arm"] == arm].sort_values("label_fraction")
        if g.empty:
            continue
        x = g["label_fraction"].to_numpy(dtype=float) * dodge[arm]
        est = g["hl_estimate"].to_numpy(dtype=float) * scale
        lo = g["hl_ci_low"].to_numpy(dtype=float) * scale
        hi = g["hl_ci_high"].to_numpy(dtype=float) * scale
        err = np.vstack([est - lo, hi - est])
        c = arm_color(arm)
        dax.errorbar(x, est, yerr=np.where(np.isfinite(err), err, 0), color=c, lw=1.2, capsize=3, fmt="-")
        sig = g["significant"].astype(bool).to_numpy()
        dax.scatter(x, est, s=30, color=c, zorder=3, facecolors=np.where(sig, c, "white"), linewidths=1.5)
    dax.axhline(0, color="black", lw=0.8, ls="--")


def mean_rank_plot(results: Sequence[tuple[str, Mapping[str, Any]]], alpha: float = 0.05) -> Figure:
    """Mean ranks per regime (Demsar 2006 layout): mean ranks (1 = best, on the right) on an axis, arm names
    on elbow lines (worse half to the left, better half to the right, so close ranks do not collide), the
    baseline (the control) in bold and a * after an arm whose comparison with it (``vs_control``, Holm) has
    p < ``alpha``. No critical-difference bars: arms are compared with the control only, and a difference
    not detected is no equivalence.

    ``results``: ``(regime_title, tables.friedman_result(...) dict)`` pairs.
    """
    n_panels = max(1, len(results))
    rows = max([math.ceil(len(r.get("mean_ranks", {})) / 2) for _, r in results] + [1])
    height = 1.2 + 0.32 * rows
    fig = Figure(figsize=(8.0, height * n_panels + 0.3))
    axes = fig.subplots(n_panels, 1, squeeze=False)[:, 0]
    for ax, (title, res) in zip(axes, results):
        ranks: Mapping[str, float] = res.get("mean_ranks", {})
        k = max(int(res.get("k", 0)), 2)
        step = 0.35
        ax.set_xlim(k + 0.1, 0.9)
        ax.set_ylim(-0.45 - step * rows, 0.9)
        ax.axhline(0, color="black", lw=1)
        for t in range(1, k + 1):
            ax.plot([t, t], [0, 0.08], color="black", lw=1)
            ax.text(t, 0.12, str(t), ha="center", va="bottom", fontsize=8)
        ax.axis("off")
        items = sorted(ranks.items(), key=lambda kv: kv[1], reverse=True)  # worst first
        differs = {c["arm"] for c in res.get("vs_control", []) if c["p_holm"] < alpha}
        half = math.ceil(len(items) / 2)
        for i, (arm, r) in enumerate(items):
            left = i < half
            row = i if left else len(items) - 1 - i
            y = -0.35 - step * row
            end = k + 0.1 if left else 0.9
            c = arm_color(arm)
            ax.plot([r, r, end], [0, y, y], color=c, lw=1)
            ax.plot([r], [0], "o", color=c, ms=6)
            ax.text(
                end,
                y,
                f" {arm_title(arm)}{'*' if arm in differs else ''} ({r:.2f}) ",
                ha="right" if left else "left",
                va="center",
                fontsize=8,
                fontweight="bold" if arm == res.get("control") else "normal",
                clip_on=False,
            )
        p = res.get("p", math.nan)
        note = res.get("note") or ""
        stat = (
            f"Friedman (Iman\u2013Davenport) {_fmt_p(p)}, n = {res.get('n', 0)} seeds"
            if np.isfinite(p)
            else note
        )
        ax.set_title(f"{title}: {stat}", fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def _tile(images: Sequence[np.ndarray], cols: int, gap: int) -> np.ndarray:
    """uint8 ``(S, S, 3)`` images, row-major, as one ``(rows*S + (rows-1)*gap, cols*S + (cols-1)*gap, 3)``
    image on white. One ``imshow`` on one axes draws a grid of examples several times faster than an axes
    per image (creating and drawing axes dominates these small figures)."""
    size = images[0].shape[0]
    rows = math.ceil(len(images) / cols)
    out = np.full((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        y, x = r * (size + gap), c * (size + gap)
        out[y : y + size, x : x + size] = img[:size, :size, :3]
    return out


def _tile_figure(tiled: np.ndarray, width: float, top: float) -> tuple[Figure, Any]:
    """A figure ``width`` inches wide showing ``tiled`` edge to edge, with ``top`` inches above it for the
    title and the labels drawn above the images (at negative y in image coordinates)."""
    h, w = tiled.shape[:2]
    image_h = width * h / w
    fig = Figure(figsize=(width, image_h + top))
    ax = fig.add_axes((0.0, 0.0, 1.0, image_h / (image_h + top)))
    ax.imshow(tiled, interpolation="nearest")
    ax.set_axis_off()
    return fig, ax


def example_grid(
    title: str,
    inputs: np.ndarray,
    targets: np.ndarray,
    outputs: np.ndarray,
    max_images: int = 4,
    labels: tuple[str, str, str] = ("input", "target", "output"),
) -> Figure:
    """Pretext examples: one row per test image, three columns named by ``labels`` (input / target / model
    output; a two-view task's image / view 1 / view 2).

    Arrays: uint8 ``(N, S, S, 3)`` RGB, as saved in ``examples/<task>_seed<seed>.npz``.
    """
    n = min(max_images, len(inputs), len(targets), len(outputs))
    if n == 0:
        fig = Figure(figsize=(6.0, 2.4))
        fig.suptitle(title, fontsize=10)
        return fig
    size = inputs.shape[1]
    gap = max(1, size // 10)
    images = [arr[i] for i in range(n) for arr in (inputs, targets, outputs)]
    fig, ax = _tile_figure(_tile(images, 3, gap), 6.0, 0.7)
    for j, name in enumerate(labels):
        ax.text(j * (size + gap) + size / 2, -gap, name, ha="center", va="bottom", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def angle_example_grid(
    title: str, inputs: np.ndarray, true_deg: np.ndarray, pred_deg: np.ndarray, max_images: int = 4
) -> Figure:
    """Angle-head pretext examples: one rotated test input per panel, titled with the true and predicted angle.

    ``inputs``: uint8 ``(N, S, S, 3)`` RGB (the rotated images the model saw); ``true_deg``, ``pred_deg``:
    ``(N,)`` angles in degrees, as saved in ``examples/<task>_seed<seed>.npz``.
    """
    n = min(max_images, len(inputs), len(true_deg), len(pred_deg))
    if n == 0:
        fig = Figure(figsize=(2.0, 2.5))
        fig.suptitle(title, fontsize=10)
        return fig
    size = inputs.shape[1]
    gap = max(1, size // 10)
    fig, ax = _tile_figure(_tile([inputs[i] for i in range(n)], n, gap), 2.0 * n, 0.9)
    for i in range(n):
        ax.text(
            i * (size + gap) + size / 2,
            -gap,
            f"true {true_deg[i]:.0f}\u00b0\npredicted {pred_deg[i]:.0f}\u00b0",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    fig.suptitle(title, fontsize=10)
    return fig


__all__ = [
    "arm_color",
    "example_grid",
    "forest_plot",
    "label_efficiency_plot",
    "learning_curves_plot",
    "mean_rank_plot",
    "paired_seeds_plot",
    "angle_example_grid",
    "save_figure",
]
