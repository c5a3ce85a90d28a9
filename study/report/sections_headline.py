"""The secondary comparisons section (after the verdicts): a table of the comparisons outside the declared
primary cell (every comparison under another Holm family), what the seeds run can and cannot show
(underpowered comparisons, power planning, robustness to the Holm family), per-fraction summaries of a
label-efficiency study, pretext tasks that did not learn, and the forest plot of every comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import analysis as A
from study.report import formatting as F
from study.report import labels as L
from study.report import plots
from study.report import sentences as SN
from study.report import simulate as S
from study.report import tables as T
from study.report.document import Block, Box, Bullets, Heading, Image, Para, Table
from study.report.run_analysis import RunAnalysis, n_cells

SECONDARY_HEADING = "Secondary comparisons (exploratory)"
ALL_HEADING = "Every comparison (secondary, exploratory)"


def section_heading(a: RunAnalysis) -> str:
    """The section's title: the comparisons beside the primary cell, or every comparison when the report's
    Holm family is not the declared primary one."""
    return SECONDARY_HEADING if a.family == "primary" else ALL_HEADING


def shown_comparisons(a: RunAnalysis) -> pd.DataFrame:
    """The comparisons this section lists: the secondary family's, or every one under another family."""
    comp = a.comparisons
    return comp[comp["holm_family"] != "primary"] if a.family == "primary" else comp


def _secondary_sentence(a: RunAnalysis, shown: pd.DataFrame) -> str:
    """What this section is beside the verdicts."""
    if a.family == "primary":
        where = "regime and label fraction" if a.several_fractions else "regime"
        return (
            f"Every self-supervised arm in every other {where}: {len(shown)} comparison(s), Holm-corrected as one "
            "secondary family of their own. These are exploratory: they can suggest the next study's declared "
            "analysis, not settle this one; the verdicts above are the declared primary analysis."
        )
    family = "over the whole study" if a.family == "study" else "within each regime"
    return (
        f"Every self-supervised arm in every regime{' and label fraction' if a.several_fractions else ''}, Holm "
        f"{family} (m = {int(shown['family_size'].max())}). These are exploratory: they can suggest "
        "the next study's declared analysis, not settle this one"
        + ("; the verdicts above are the declared primary analysis." if not a.verdicts.empty else ".")
    )


def headline_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    comp, alpha = a.comparisons, a.alpha
    blocks: list[Block] = [Heading(2, section_heading(a))]
    shown = shown_comparisons(a)
    if a.pairing_error:
        blocks.append(
            Box(
                "warning",
                "the results table is not paired by seed; no comparison was computed",
                [a.pairing_error],
            )
        )
    elif comp.empty:
        blocks.append(Para(f"{F.NA}: only the baseline arm was run, so there is nothing to compare with it."))
    elif shown.empty:
        blocks.append(Para("None: the declared primary cell is the only cell this study ran."))
    else:
        blocks.append(Para(_secondary_sentence(a, shown)))
        if a.several_fractions:
            blocks += _fraction_summary_blocks(a)
        blocks.append(Table(_secondary_table(shown, a), _secondary_caption(a, shown)))
        under = shown[shown["underpowered"]]
        if len(under):
            need = int(under["min_n_for_significance"].max())
            blocks.append(
                Box(
                    "warning",
                    f"too few seeds: {len(under)} of {len(shown)} comparison(s) cannot reach significance "
                    f"whatever the data; at least {need} non-zero paired differences are needed",
                    grouped_warnings(under, len(shown)),
                )
            )
        blocks.append(Para(_power_sentence(shown, alpha, a.several_fractions)))
        if n_cells(comp) > 1:
            blocks.append(Para(_robustness_sentence(a)))
    not_learned = [_not_learned_sentence(r) for r in a.learned.itertuples() if r.majority_failed]
    if not_learned:
        blocks.append(Box("warning", "pretext tasks that did not learn", not_learned))
    for w in SN.consistency_warnings(a.df):
        blocks.append(Box("warning", "the arms are not comparable as run", [w]))
    if not comp.empty:
        blocks.append(_forest_image(a, fig_dir))
    return blocks


def _secondary_table(shown: pd.DataFrame, a: RunAnalysis) -> pd.DataFrame:
    """One row per comparison: where, which arm, the estimate with its interval, Holm p and what it shows."""
    failed = _failed_pretexts(a.learned)
    up, down = L.direction_words(a.metric)
    rows = []
    for r in shown.itertuples(index=False):
        better = bool(A.arm_better(r.hl_estimate, r.mean_diff, a.metric))
        reading = (f"significant, arm {up if better else down}" if r.significant else "not significant") + (
            " (underpowered)" if r.underpowered else ""
        )
        lost = failed.get(r.arm)
        rows.append(
            {
                "Where": _place(r, a.several_fractions),
                "Arm": r.arm_title,
                "Estimate": _estimate_text(r, a.alpha),
                "Holm p": F.p_value(r.p_holm),
                "Reading": reading,
                "Pretext learned": f"{lost[1] - lost[0]} of {lost[1]} seeds" if lost else "",
            }
        )
    table = pd.DataFrame(rows)
    return table if table["Pretext learned"].astype(bool).any() else table.drop(columns="Pretext learned")


def _secondary_caption(a: RunAnalysis, shown: pd.DataFrame) -> str:
    m = int(shown["family_size"].max())
    family = {"primary": "the secondary family", "study": "the whole study", "regime": "each regime"}[
        a.family
    ]
    return (
        f"Paired difference arm \u2212 baseline of test {a.label}: Hodges\u2013Lehmann estimate with its "
        f"{round((1 - a.alpha) * 100)} % exact signed-rank CI (not adjusted for multiplicity); Holm p over "
        f"{family} (m = {m}), \u03b1 = {a.alpha:g}. \u201cNot significant\u201d is not \u201cno effect\u201d: "
        "only the primary verdicts test equivalence. Every column in comparisons.csv."
        + (
            " Pretext learned: given only for an arm whose pretext beat its learning-free reference on fewer "
            "than half of the seeds (its comparison then tests the weights of a task that barely learned)."
            if _failed_pretexts(a.learned)
            else ""
        )
    )


def _forest_image(a: RunAnalysis, fig_dir: Path) -> Image:
    comp = a.comparisons
    fraction = a.metric in A.FRACTION_METRICS
    # Grouped by where a comparison lives: its regime, or its label fraction and regime.
    places = [_place(r, a.several_fractions) for r in comp.itertuples()]
    fig = plots.forest_plot(
        comp.assign(regime_title=places),
        f"\u0394 {a.label}" + (" (pp)" if fraction else ""),
        scale=100.0 if fraction else 1.0,
        alpha=a.alpha,
    )
    path = plots.save_figure(fig, fig_dir / "forest.png")
    level = round((1 - a.alpha) * 100)
    return Image(
        path,
        f"Paired differences in {a.label} vs baseline, every comparison: Hodges\u2013Lehmann estimate with "
        f"its {level} % exact signed-rank CI (not adjusted for multiplicity), mean as \u00d7",
    )


def _fraction_summary_blocks(a: RunAnalysis) -> list[Block]:
    """Per label fraction: does any arm beat the baseline (significant in the table's Holm family), with its
    effect and interval; then how the mean difference moves with the fraction (descriptive)."""
    comp, metric = a.comparisons, a.metric
    per = T.fraction_summary(comp)
    sizes = comp.groupby("holm_family")["family_size"].max()
    family = {
        "study": f"Holm over all m = {len(comp)} comparisons of the study",
        "regime": f"Holm within each regime of each fraction (m = {comp['arm'].nunique()})",
        "primary": f"Holm within the primary cell (m = {sizes.get('primary', 0)}) or the secondary family "
        f"(m = {sizes.get('secondary', 0)})",
    }[a.family]
    up, down = L.direction_words(metric)
    beats = "beats" if A.metric_direction(metric) else "is higher than"
    lines = []
    for r in per.itertuples(index=False):
        head = f"{L.fraction_title(r.label_fraction)}: "
        sub = comp[comp[A.LABEL_FRACTION] == r.label_fraction]
        better = sub[sub["significant"] & A.arm_better(sub["hl_estimate"], sub["mean_diff"], metric)]
        if len(better):
            listed = "; ".join(
                f"{c.arm_title}, {c.regime_title}: {_effect_text(c, a.alpha)}" for c in better.itertuples()
            )
            text = f"{len(better)} of {r.m} comparisons significant with the arm {up} ({family}) \u2014 "
            text += listed
        elif pd.notna(r.best):
            # No "most favourable estimate": picked after looking, its unadjusted interval would overstate it.
            text = f"no arm {beats} the baseline ({family})"
        else:
            text = f"no arm {beats} the baseline ({family}); no comparison has an estimate"
        if r.n_worse:
            text += f"; {r.n_worse} significant with the arm {down}"
        lines.append(head + text + ".")
    return [
        Para(
            "Per label fraction (does any self-supervised arm beat the baseline at that share of the labels?):"
        ),
        Bullets(lines),
        Para(_fraction_trend_sentence(per, metric, T.fraction_trend(a.df, metric, a.pairing), a.alpha)),
    ]


def _effect_text(r: Any, alpha: float) -> str:
    """``"+6.1 pp AUC (Hodges–Lehmann), 95 % signed-rank CI [3.2, 8.8], Holm p = 0.003"`` for a comparison
    row (namedtuple or Series)."""
    p = float(r["p_holm"] if isinstance(r, pd.Series) else r.p_holm)
    return f"{_estimate_text(r, alpha)}, Holm p {F.format_p(p)}"


def _estimate_text(r: Any, alpha: float) -> str:
    """``"+6.1 pp AUC (Hodges–Lehmann), 95 % signed-rank CI [3.2, 8.8]"`` for a comparison row."""
    get = r.__getitem__ if isinstance(r, pd.Series) else lambda k: getattr(r, k)
    metric = get("metric")
    pp = metric in A.FRACTION_METRICS
    scale = 100.0 if pp else 1.0
    low, high = float(get("hl_ci_low")), float(get("hl_ci_high"))
    ci = (
        f"{round((1 - alpha) * 100)} % signed-rank CI [{F.bound(low * scale, pp)}, {F.bound(high * scale, pp)}]"
        if np.isfinite(low)
        else f"signed-rank CI n/a (n = {int(get('n'))})"
    )
    return f"{F.format_diff(float(get('hl_estimate')), metric)} {L.metric_label(metric)} (Hodges\u2013Lehmann), {ci}"


def _fraction_trend_sentence(per: pd.DataFrame, metric: str, trend: dict[str, Any], alpha: float) -> str:
    """How the mean paired difference (over a fraction's arms and regimes) moves with the label fraction
    (descriptive), then the declared trend test (``tables.fraction_trend``): a trend is stated only when that
    test is significant at ``alpha``."""
    values = "; ".join(
        f"{L.fraction_title(f)} {F.format_diff(v, metric)}"
        for f, v in zip(per[A.LABEL_FRACTION], per["mean_hl"])
    )
    text = (
        f"Mean Hodges\u2013Lehmann difference vs the baseline over each fraction's comparisons (every arm and "
        f"regime, so not inflated by picking the best; descriptive, not a test): {values}."
    )
    gain = "gain" if A.metric_direction(metric) else "difference (arm higher)"
    test = (
        f"Trend test across the label fractions (declared: per seed, the slope of the {gain} averaged over "
        "every arm and regime against the fraction's rank; two-sided Wilcoxon signed-rank test of the "
        f"{trend['n']} seeds' slopes)"
    )
    p, slope = trend["p"], trend["slope"]
    if not np.isfinite(p):
        return f"{text} {test}: n/a (it needs at least 2 seeds complete at every fraction)."
    shown = f"slope {F.format_diff(slope, metric)} per fraction step, p {F.format_p(p)}"
    if p >= alpha or slope == 0:
        return f"{text} {test}: {shown}, not significant at \u03b1 = {alpha:g}, so no trend is claimed."
    if slope < 0:
        literature = (
            ", the pattern the self-supervised literature reports" if A.metric_direction(metric) else ""
        )
        return f"{text} {test}: {shown}: the {gain} shrinks as labels are added{literature}."
    return f"{text} {test}: {shown}: the {gain} grows as labels are added."


def _failed_pretexts(learned: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{arm: (seeds not learned, seeds judged)}`` for arms whose pretext failed on most seeds."""
    return {
        r.arm: (int(r.n_judged - r.n_learned), int(r.n_judged))
        for r in learned.itertuples()
        if r.majority_failed
    }


def _learned_suffix(failed: tuple[int, int] | None) -> str:
    if failed is None:
        return ""
    return f" \u2014 pretext did not beat its reference on {failed[0]} of {failed[1]} seeds"


def _not_learned_sentence(r: Any) -> str:
    """``r``: a row of ``analysis.pretext_learned``."""
    ref = L.REFERENCE_TITLES.get(r.reference, "its best learning-free reference")
    what = (
        "a task that learned nothing"
        if r.n_learned == 0
        else f"a task that learned on only {r.n_learned} of {r.n_judged} seeds"
    )
    return (
        f"{r.arm_title} did not beat {ref} on {r.n_judged - r.n_learned} of {r.n_judged} seeds: its "
        f"fine-tune comparison tests the pretext weights of {what}."
    )


PLANNING_EFFECTS = (0.8, 1.0, 1.5, 2.0)


def grouped_warnings(under: pd.DataFrame, n_comparisons: int) -> list[str]:
    """One line per distinct reason: comparisons with the same seeds share one explanation (`warning` is
    "<arm> vs baseline, <regime>: <reason>")."""
    groups: dict[str, list[str]] = {}
    for text in under["warning"]:
        who, _, why = str(text).partition(": ")
        groups.setdefault(why or who, []).append(who)
    lines = []
    for why, who in groups.items():
        if len(who) == 1:
            lines.append(f"{who[0]}: {why}")
        else:
            label = f"all {len(who)} comparisons" if len(who) == n_comparisons else "; ".join(who)
            lines.append(f"{label[0].upper()}{label[1:]}: {why}")
    return lines


def _place(r: Any, with_fraction: bool) -> str:
    """Where comparison row ``r`` (a namedtuple of comparisons) lives: its regime, with its label fraction."""
    return L.cell_title(getattr(r, A.LABEL_FRACTION, 1.0), r.regime_title, with_fraction)


def _power_sentence(comp: pd.DataFrame, alpha: float, with_fraction: bool = False) -> str:
    m = int(comp["family_size"].max())
    reference = " / ".join(F.seeds(S.seeds_for_headline_power(e, m, alpha)) for e in PLANNING_EFFECTS)
    procedure = (
        f"the headline procedure (two-sided exact Wilcoxon, Holm over m = {m}, \u03b1 = {alpha:g}; "
        f"simulated, {S.N_SIM} studies per seed count)"
    )
    tail = (
        f" For reference, at a true d_z of {' / '.join(f'{e:g}' for e in PLANNING_EFFECTS)} it needs "
        f"{reference} seeds."
    )
    parts = [
        f"{r.arm_title}, {_place(r, with_fraction)}: {_planning_range(r)}"
        for r in comp.itertuples(index=False)
        if not r.significant and "seeds_80_min" in comp
    ]
    if not parts:
        return f"Every comparison is significant after Holm correction.{tail}"
    return (
        f"Power planning: seeds {procedure} would need for 80 % power, if the true effect lay anywhere in "
        "each non-significant comparison's 80 % CI of d_z (a range, not a point: an effect observed on few "
        "seeds is noisy; a low end at or below the seeds run means only that such an effect is plausible): "
        + "; ".join(parts)
        + "."
        + tail
    )


def _planning_range(r: Any) -> str:
    """A comparison's seeds-for-80 %-power range, or "n/a (why)" when it has none (``planning_note``)."""
    note = getattr(r, "planning_note", "")
    if isinstance(note, str) and note:
        return f"{F.NA} ({note})"
    return F.seed_range(r.seeds_80_min, r.seeds_80_max)


def _robustness_sentence(a: RunAnalysis) -> str:
    comp, alpha, rates = a.comparisons, a.alpha, a.null_rates
    m, k = len(comp), comp["arm"].nunique()
    n = int(comp["n_nonzero"].max())
    several = a.several_fractions
    per = "per regime and label fraction" if several else "per regime"
    if a.family == "primary":
        per = "in the primary and the secondary family"
    if a.family == "study":
        alt = comp[comp["p_holm_regime"] < alpha]
        listed = "; ".join(f"{r.arm_title}, {_place(r, several)}" for r in alt.itertuples())
        return (
            f"Robustness: with Holm {per} instead (over the {k} arm(s) of each regime"
            + (" of each fraction" if several else "")
            + "; study-wise "
            f"false-positive rate {F.sim_rate(rates.get('studywise_regime'), rates.get('n_sim', 0))} for this "
            "design), "
            + (f"{len(alt)} comparison(s) would be significant: {listed}" if len(alt) else "none would be")
            + " (p_holm_regime in comparisons.csv)."
        )
    sig = comp[comp["significant"]]
    need = A.min_n_for_significance(alpha, m)
    floor = f"; that family needs at least {need} non-zero paired differences"
    if n < need:
        floor += f", more than this run's {n}, so it cannot reject here"
    if sig.empty:
        return (
            f"Robustness: no comparison is significant with Holm {per}, so none is with Holm across all "
            f"{m} comparisons of the study either (p_holm_study in comparisons.csv{floor})."
        )
    strict = sig[sig["p_holm_study"] < alpha]
    listed = "; ".join(f"{r.arm_title}, {_place(r, several)}" for r in strict.itertuples())
    return (
        f"Robustness: with Holm across all {m} comparisons of the study instead of {per}, "
        f"{len(strict)} of {len(sig)} significant comparison(s) remain significant"
        + (f": {listed}" if listed else "")
        + f" (p_holm_study in comparisons.csv{floor})."
    )
