"""The result sections: Table 1 (the paper's layout, with the paper's own values beside), label efficiency,
every comparison with the baseline, the Friedman test, all metrics, stop epochs and learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import analysis as A
from study.report import formatting as F
from study.report import labels as L
from study.report import plots
from study.report.document import Block, Heading, Image, Para, Table
from study.report.run_analysis import RunAnalysis
from study.stats import FRIEDMAN_MIN_BLOCKS
from study.tasks import registry

# The paper's Table 1 (soft accuracy, %, one run per cell) for the baseline, by regime; each task's own row is
# its registry entry's (`PretextTask.paper_table1`). Set beside the repeated-seed results.
PAPER_BASELINE_TABLE1 = {"none": 88.5, "patience3": 74.1, "patience10": 79.0}


def _paper_layout(summary: pd.DataFrame, metric: str, with_fraction: bool = False) -> pd.DataFrame:
    """Rows = regimes (per label fraction when ``with_fraction``), columns = arms (paper's Table 1 layout);
    cells "mean ± SD", "(n = k)" if short."""
    s = summary[summary["metric"] == metric]
    arms = A.arm_order(s["arm"])
    n_max = int(s["n"].max()) if len(s) else 0
    rows = []
    for f, regime in F.summary_cells(s):
        row = F.cell_columns(f, regime, with_fraction)
        for arm in arms:
            r = s[(s[A.LABEL_FRACTION] == f) & (s["regime"] == regime) & (s["arm"] == arm)]
            if r.empty or r["n"].iloc[0] == 0:
                row[L.arm_title(arm)] = F.NA
                continue
            r = r.iloc[0]
            cell = F.mean_sd(r["mean"], r["sd"], metric)
            if r["n"] < n_max:
                cell += f" (n = {int(r['n'])})"
            row[L.arm_title(arm)] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def _paper_reference() -> pd.DataFrame:
    """The paper's Table 1: a row per regime, the baseline then each task the paper ran (registry order)."""
    columns = {L.arm_title(A.BASELINE): PAPER_BASELINE_TABLE1}
    columns |= {L.arm_title(t.name): dict(t.paper_table1) for t in registry.TASKS.values() if t.paper_table1}
    rows = [
        {"Regime": L.regime_title(r), **{title: f"{v[r]:.1f}" for title, v in columns.items()}}
        for r in PAPER_BASELINE_TABLE1
    ]
    return pd.DataFrame(rows)


def _comparison_display(comp: pd.DataFrame, alpha: float, with_fraction: bool = False) -> pd.DataFrame:
    metric = comp["metric"].iloc[0]
    scale, unit = (100, " (pp)") if metric in A.FRACTION_METRICS else (1, "")
    level = round((1 - alpha) * 100)
    family = "study" if (comp["holm_family"] == "study").all() else "regime"
    if comp["holm_family"].isin(["primary", "secondary"]).all():
        family = "primary/secondary"
    rows = []
    for r in comp.itertuples(index=False):

        def interval(low: float, high: float) -> str:
            return (
                f"[{F.diff(low * scale, metric)}, {F.diff(high * scale, metric)}]"
                if np.isfinite(low)
                else F.NA
            )

        rows.append(
            ({F.LABELS_COLUMN: F.percent(getattr(r, A.LABEL_FRACTION))} if with_fraction else {})
            | {
                "Regime": r.regime_title,
                "Arm": r.arm_title,
                "n": r.n,
                "Baseline": F.value(r.mean_baseline, metric),
                "Arm mean": F.value(r.mean_arm, metric),
                f"HL \u0394{unit}": F.diff(r.hl_estimate * scale, metric, signed=True),
                f"{level} % signed-rank CI (HL)": interval(r.hl_ci_low, r.hl_ci_high),
                f"mean \u0394{unit}": F.diff(r.mean_diff * scale, metric, signed=True),
                f"{level} % t-CI (mean)": interval(r.mean_ci_low, r.mean_ci_high),
                "p Wilcoxon": F.p_value(r.p_wilcoxon),
                "p t-test": F.p_value(r.p_ttest),
                f"Holm p ({family})": F.p_value(r.p_holm)
                + (f" ({r.holm_family})" if family == "primary/secondary" else ""),
                "g_z": F.num(r.hedges_gz, 2),
                "r_rb": F.num(r.rank_biserial, 2),
                "P(improve)": F.num(r.prob_improvement, 2),
                "seeds for 80 % power (range)": F.seed_range(
                    getattr(r, "seeds_80_min", np.nan), getattr(r, "seeds_80_max", np.nan)
                ),
                "verdict": ("significant" if r.significant else "not significant")
                + (" (underpowered)" if r.underpowered else ""),
            }
        )
    return pd.DataFrame(rows)


def _all_metrics_table(summary: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    rows = []
    for (f, regime, arm), g in summary.groupby([A.LABEL_FRACTION, "regime", "arm"], sort=False):
        row = F.cell_columns(f, regime, with_fraction) | {"Arm": L.arm_title(arm)}
        for r in g.itertuples(index=False):
            if r.metric in A.CLASSIFICATION_METRICS:
                row[L.metric_label(r.metric)] = F.mean_sd(r.mean, r.sd, r.metric)
        row["n"] = int(g["n"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def _stop_epoch_table(summary: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    s = summary[summary["metric"] == "stop_epoch"]
    rows = []
    for f, regime in F.summary_cells(s):
        row = F.cell_columns(f, regime, with_fraction)
        for arm in A.arm_order(s["arm"]):
            r = s[(s[A.LABEL_FRACTION] == f) & (s["regime"] == regime) & (s["arm"] == arm)]
            if r.empty or r["n"].iloc[0] == 0:
                row[L.arm_title(arm)] = F.NA
                continue
            r = r.iloc[0]
            row[L.arm_title(arm)] = (
                f"{F.mean_sd(r['mean'], r['sd'], 'stop_epoch')}; "
                f"median {r['median']:.0f} [{r['q1']:.0f}, {r['q3']:.0f}]"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _friedman_table(results: list[dict[str, Any]], with_fraction: bool = False) -> pd.DataFrame:
    rows = []
    for res in results:
        ranks = res["mean_ranks"]
        order = sorted(ranks, key=ranks.get)
        best = "best" if A.metric_direction(res["metric"]) else "highest"
        rows.append(
            F.cell_columns(res.get(A.LABEL_FRACTION, 1.0), res["regime"], with_fraction)
            | {
                "k arms": res["k"],
                "n seeds": res["n"],
                "\u03c7\u00b2": F.num(res["chi2"], 4),
                "Iman\u2013Davenport F": _f_text(res),
                "p": F.p_value(res["p"]),
                f"mean ranks (1 = {best})": ", ".join(f"{L.arm_title(a)} {ranks[a]:.2f}" for a in order)
                or F.NA,
                "vs baseline: rank difference (Holm p)": "; ".join(
                    f"{L.arm_title(c['arm'])} {F.num(c['rank_diff'], 2)} ({F.p_value(c['p_holm'])})"
                    for c in res["vs_control"]
                )
                or F.NA,
                "note": res["note"] or "",
            }
        )
    return pd.DataFrame(rows)


def _f_text(res: dict[str, Any]) -> str:
    """``"3.42 (3, 27)"``: the Iman–Davenport F with its degrees of freedom; n/a when not run."""
    if not np.isfinite(res["f_statistic"]):
        return F.NA
    return f"{F.num(res['f_statistic'], 4)} ({int(res['df1'])}, {int(res['df2'])})"


def table1_blocks(a: RunAnalysis) -> list[Block]:
    metric, summary, several = a.metric, a.summary, a.several_fractions
    per = "arm, regime and label fraction" if several else "arm and regime"
    labels = "; Labels: the share of the training labels the fine-tune saw" if several else ""
    blocks: list[Block] = [
        Heading(2, f"Table 1: test {a.label} per {per}"),
        Table(
            _paper_layout(summary, metric, several),
            f"Mean \u00b1 SD over seeds, {F.unit(metric) or 'raw units'}; status-ok trials{labels}.",
        ),
    ]
    if metric != "test_soft_accuracy":
        blocks.append(Heading(3, "Table 1 (soft accuracy, the paper's \u201caccuracy\u201d)"))
        blocks.append(
            Table(_paper_layout(summary, "test_soft_accuracy", several), "Mean \u00b1 SD over seeds, %.")
        )
    blocks.append(
        Table(
            _paper_reference(),
            "The paper's Table 1 (soft accuracy, %, a single run per cell"
            + (", all training labels" if several else "")
            + ") for reference.",
        )
    )
    return blocks


def label_efficiency_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    """A study of several label fractions: the metric vs the fraction per arm (figure) and each arm's paired
    difference from the baseline per fraction (table). Nothing for a study of one fraction."""
    if not a.several_fractions:
        return []
    metric, comp, alpha = a.metric, a.comparisons, a.alpha
    level = round((1 - alpha) * 100)
    pp = metric in A.FRACTION_METRICS
    scale = 100.0 if pp else 1.0
    fractions = ", ".join(F.percent(f) for f in a.fractions)
    blocks: list[Block] = [
        Heading(2, f"Label efficiency: test {a.label} vs label fraction"),
        Para(
            f"Every arm was fine-tuned on {fractions} of the training labels. For one seed every arm sees the "
            "same labelled subset, and a smaller fraction's subset lies inside a larger one's; the pretext "
            "phase does not use labels, so one pretext model per task and seed serves every fraction (the "
            "pretext tables below count it once). Self-supervised pre-training is expected to help most "
            "where labels are fewest: the lower panels and the table show each arm's paired difference from "
            "the baseline at each fraction."
        ),
    ]
    levels = a.efficiency
    clipped = False
    if pp:  # a t-interval on few seeds can leave [0, 1]; drawn within the metric's range
        bounds = levels[["ci_low", "ci_high"]]
        clipped = bool(((bounds < 0) | (bounds > 1)).any().any())
        levels = levels.assign(ci_low=levels["ci_low"].clip(0, 1), ci_high=levels["ci_high"].clip(0, 1))
    fig = plots.label_efficiency_plot(
        levels,
        comp if len(comp) else None,
        f"test {a.label}" + (" (%)" if pp else ""),
        f"\u0394 {a.label} vs baseline" + (" (pp)" if pp else ""),
        scale=scale,
        alpha=alpha,
    )
    path = plots.save_figure(fig, fig_dir / "label_efficiency.png")
    caption = (
        f"Test {a.label} vs label fraction (log axis), one panel per early-stopping regime. Top: mean over "
        f"seeds with its {level} % t-interval, per arm (unpaired: the seed effect stays in, so overlapping "
        "intervals do not mean no difference)" + ("; intervals cut at 0 and 100 %" if clipped else "")
    )
    if len(comp):
        caption += (
            f"; bottom: paired difference vs the baseline, Hodges\u2013Lehmann estimate with its {level} % "
            f"exact signed-rank CI (not adjusted for multiplicity), filled: Holm p < {alpha:g}"
        )
    blocks.append(Image(path, caption + "."))
    if len(comp):
        blocks.append(
            Table(
                _fraction_difference_table(comp, metric),
                "Hodges\u2013Lehmann difference arm \u2212 baseline"
                + (" in percentage points" if pp else "")
                + f" with its {level} % exact signed-rank CI, per label fraction; * significant after Holm "
                f"({_family_words(a, len(comp))}). "
                "Full precision in comparisons.csv; per-arm means in label_efficiency.csv.",
            )
        )
    return blocks


def _family_words(a: RunAnalysis, m: int) -> str:
    """The report's Holm family, in a few words."""
    return {
        "study": f"all {m} comparisons of the study",
        "regime": "per regime and fraction",
        "primary": "within the primary cell, the other cells as one secondary family",
    }[a.family]


def _fraction_difference_table(comp: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows = regime x arm, columns = label fractions; cells ``"+4.1 [0.3, 7.9] *"`` (HL estimate, its CI,
    * when significant)."""
    scale = 100.0 if metric in A.FRACTION_METRICS else 1.0
    fractions = sorted(comp[A.LABEL_FRACTION].unique())
    rows = []
    for (regime, arm), g in comp.groupby(["regime", "arm"], sort=False):
        row = {"Regime": g["regime_title"].iloc[0], "Arm": g["arm_title"].iloc[0]}
        by_f = g.set_index(A.LABEL_FRACTION)
        for f in fractions:
            if f not in by_f.index:
                row[F.percent(f)] = F.NA
                continue
            r = by_f.loc[f]
            cell = F.diff(r["hl_estimate"] * scale, metric, signed=True)
            if np.isfinite(r["hl_ci_low"]):
                cell += (
                    f" [{F.diff(r['hl_ci_low'] * scale, metric)}, {F.diff(r['hl_ci_high'] * scale, metric)}]"
                )
            row[F.percent(f)] = cell + (" *" if r["significant"] else "")
        rows.append(row)
    return pd.DataFrame(rows)  # comparisons are ordered by fraction, regime, arm: rows keep regime, arm


def comparison_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "All comparisons with the baseline")]
    if a.comparisons.empty:
        why = "the table is not paired (see above)." if a.pairing_error else "no arm besides the baseline."
        blocks.append(Para(f"{F.NA}: {why}"))
    else:
        blocks.append(
            Table(
                _comparison_display(a.comparisons, a.alpha, a.several_fractions),
                "Means in % for fractions; differences and intervals in percentage points. HL: "
                "Hodges\u2013Lehmann estimate with its exact signed-rank CI (Walsh averages), the interval of "
                "the headline test; t-CI: t-interval of the mean difference; neither adjusted for "
                f"multiplicity. Holm p is the headline. g_z, r_rb, P(improve): positive = arm {L.direction_words(a.metric)[0]}. Seeds for "
                "80 % power: the headline procedure simulated across the 80 % CI of the effect (a planning "
                "range). Full precision in comparisons.csv.",
            )
        )
    if a.pairing is not None:
        panels = []
        s = a.summary[a.summary["metric"] == a.metric]
        means = s.set_index([A.LABEL_FRACTION, "regime", "arm"])["mean"]
        several = a.several_fractions
        for f, regime in a.pairing.cells:
            mat, _, arm_cols = A.paired_matrix(a.df, a.metric, regime, label_fraction=f, pairing=a.pairing)
            title = L.cell_title(f, L.regime_title(regime), several)
            panels.append((title, mat, arm_cols, [means.get((f, regime, x), np.nan) for x in arm_cols]))
        scale = 100.0 if a.metric in A.FRACTION_METRICS else 1.0
        fig = plots.paired_seeds_plot(
            panels,
            f"test {a.label}" + (" (%)" if scale == 100 else ""),
            scale=scale,
            ncols=len(a.pairing.regimes) if several else None,
        )
        blocks.append(Image(plots.save_figure(fig, fig_dir / "paired_seeds.png"), f"Per-seed test {a.label}"))
    return blocks


def friedman_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "All arms together: Friedman test and mean ranks")]
    if not a.friedmans:
        return blocks + [Para(f"{F.NA}: the table is not paired by seed.")]
    blocks.append(
        Para(
            "Friedman test over all arms per regime"
            + (" and label fraction" if a.several_fractions else "")
            + f" (complete seeds only; run from {FRIEDMAN_MIN_BLOCKS} complete seeds up), as the "
            "Iman\u2013Davenport F (less conservative than Friedman's \u03c7\u00b2, also shown), then each "
            "self-supervised arm against the baseline from the mean ranks: z = (R_baseline \u2212 R_arm) / "
            "\u221a(k(k+1)/(6N)), Holm over the k \u2212 1 comparisons with the baseline (Dem\u0161ar 2006, "
            f"section 3.2.2), at \u03b1 = {a.alpha:g}. A rank difference below 0 means the arm ranks better; a "
            "non-significant one does not mean the arms are equivalent. Secondary: mean-rank comparisons "
            "depend on which arms are in the pool (Benavoli et al. 2016), so the pairwise Holm-corrected "
            "Wilcoxon tests above are the headline."
        )
    )
    several = a.several_fractions
    blocks.append(Table(_friedman_table(a.friedmans, several)))
    if any(f["k"] >= 3 and f["n"] >= 2 for f in a.friedmans):
        titles = [
            L.cell_title(f[A.LABEL_FRACTION], L.regime_title(f["regime"]), several) for f in a.friedmans
        ]
        fig = plots.mean_rank_plot(list(zip(titles, a.friedmans)), a.alpha)
        path = plots.save_figure(fig, fig_dir / "mean_ranks.png")
        per = "per regime and label fraction" if several else "per regime"
        blocks.append(
            Image(
                path,
                f"Mean ranks {per}; * an arm that differs from the baseline (Holm, \u03b1 = {a.alpha:g})",
            )
        )
    return blocks


def metrics_blocks(a: RunAnalysis) -> list[Block]:
    return [
        Heading(2, "All classification metrics"),
        Table(
            _all_metrics_table(a.summary, a.several_fractions),
            "Mean \u00b1 SD over seeds, %; descriptive (summary.csv has median and IQR).",
        ),
    ]


def stop_epoch_blocks(a: RunAnalysis) -> list[Block]:
    return [
        Heading(2, "Stop epochs"),
        Table(
            _stop_epoch_table(a.summary, a.several_fractions),
            "Fine-tune epoch at which each regime stopped: mean \u00b1 SD; median [Q1, Q3]. An early stop "
            "at the first epochs with chance-level validation accuracy points to unsettled BatchNorm "
            "statistics.",
        ),
    ]


def curve_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Learning curves")]
    if a.curves is None:
        return blocks + [Para(f"{F.NA}: {a.history_why}.")]
    fig = plots.learning_curves_plot(
        a.curves, [("val_loss", "validation loss"), ("val_auc", "validation AUC")]
    )
    path = plots.save_figure(fig, fig_dir / "learning_curves.png")
    per = " (one row per label fraction)" if a.curves[A.LABEL_FRACTION].nunique() > 1 else ""
    return blocks + [Image(path, f"Validation loss and AUC per fine-tune epoch{per}")]
