"""The report's first screen: the question, the design in one line, one verdict per primary comparison
(`study.verdicts`), the forest plot of those comparisons with the equivalence band, and what would decide
the comparisons still undecided."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from study import analysis as A
from study.report import formatting as F
from study.report import labels as L
from study.report import plots
from study.report.document import Block, Box, Heading, Image, Para, Table
from study.report.run_analysis import RunAnalysis
from study.report.sequential import seeds_to_extend

VERDICT_TITLES = {
    "better": "arm better",
    "worse": "baseline better",
    "equivalent": "equivalent within \u00b1\u03b4",
    "undecided": "undecided",
}


def answer_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    """The answer first: question, design, verdict table, forest plot, what would decide."""
    if a.plan is None:
        return []
    blocks: list[Block] = [Heading(2, "The answer"), Para(_question(a))]
    if a.plan_note:
        blocks.append(Box("note", "primary analysis", [a.plan_note]))
    v = a.verdicts
    if v.empty:
        return blocks + [Para(f"No verdict: {_no_verdict(a)}.")]
    blocks += [Para(_design(a)), Table(verdict_table(v, a), _table_caption(a))]
    if a.looks is not None:
        blocks.append(Table(looks_table(a), _looks_caption(a)))
    blocks.append(_forest(v, a, fig_dir))
    blocks.append(Para(_what_would_decide(v, a)))
    return blocks


def _no_verdict(a: RunAnalysis) -> str:
    if a.pairing_error:
        return a.pairing_error
    if not A.metric_direction(a.metric):
        return f"{a.label} has no better direction; a verdict needs a metric that has one"
    if a.df["arm"].nunique() < 2:
        return "only the baseline arm was run"
    return f"the run has no comparison in the primary cell ({L.regime_title(a.plan.primary_regime)})"


def _question(a: RunAnalysis) -> str:
    return (
        "Question: does self-supervised pre-training of the encoder improve the melanoma classifier's test "
        f"{a.label} over the same network fine-tuned without it, by more than \u00b1{_margin(a)}?"
    )


def _design(a: RunAnalysis) -> str:
    plan, v = a.plan, a.verdicts
    n = int(v["n"].max()) if len(v) else 0
    config = (a.manifest or {}).get("config") or {}
    data = (config.get("base") or {}).get("data_path") or "synthetic lesions"
    fingerprint = (a.manifest or {}).get("data_fingerprint")
    data += f" (data fingerprint {fingerprint})" if fingerprint else ""
    fraction = f", {F.percent(plan.primary_fraction)} of the labels" if a.several_fractions else ""
    return (
        f"Design: {data}; {v['arm'].nunique()} self-supervised arm(s) against the baseline on {n} paired seeds; "
        f"primary cell declared before the run: {L.regime_title(plan.primary_regime)}{fraction}; "
        f"equivalence margin \u03b4 = \u00b1{_margin(a)}; Holm over the m = {len(v)} primary comparisons at "
        f"\u03b1 = {plan.alpha:g}{_looks_phrase(a)}. Every other regime and fraction is secondary and exploratory "
        "(below)."
    )


def _looks_phrase(a: RunAnalysis) -> str:
    if a.looks is None:
        return ""
    kind = "declared" if a.looks_planned else "unplanned, corrected"
    return f", in {len(a.looks)} look(s) at {', '.join(str(n) for n in a.looks['seeds'])} seeds ({kind})"


def _margin(a: RunAnalysis) -> str:
    return F.format_diff(a.plan.equivalence_margin, a.metric).lstrip("+")


def verdict_table(v: pd.DataFrame, a: RunAnalysis) -> pd.DataFrame:
    """One row per primary comparison, cells formatted as text."""
    pp = a.metric in A.FRACTION_METRICS
    level = round((1 - a.plan.alpha) * 100)
    rows = []
    for r in v.itertuples(index=False):
        rows.append(
            {
                "Arm": r.arm_title,
                "Verdict": VERDICT_TITLES[r.verdict],
                f"Estimate{', pp' if pp else ''} [{level} % CI]": (
                    f"{F.format_diff(r.hl_estimate, a.metric)} [{F.bound(_pp(r.hl_ci_low, pp), pp)}, "
                    f"{F.bound(_pp(r.hl_ci_high, pp), pp)}]"
                    if np.isfinite(r.hl_ci_low)
                    else f"{F.format_diff(r.hl_estimate, a.metric)} [no CI at n = {int(r.n)}]"
                ),
                "Holm p": F.p_value(r.p_holm_primary),
                "TOST p (Holm)": F.p_value(r.p_tost_holm),
                "P(better) / P(equiv.) / P(worse)": " / ".join(
                    f"{x:.2f}" if np.isfinite(x) else F.NA
                    for x in (r.p_bayes_better, r.p_bayes_equivalent, r.p_bayes_worse)
                ),
                "Seeds to decide": " ".join(_seeds_to_decide(r)) if r.verdict == "undecided" else "",
            }
        )
        if a.looks is not None:
            look = getattr(r, "look", np.nan)
            rows[-1]["Decided at"] = _decided_at(look, a.looks) if r.verdict != "undecided" else ""
    return pd.DataFrame(rows)


def _decided_at(look: float, looks: pd.DataFrame) -> str:
    if not np.isfinite(look) or int(look) < 1:
        return F.NA
    return f"look {int(look)} ({int(looks['seeds'].iloc[int(look) - 1])} seeds)"


def looks_table(a: RunAnalysis) -> pd.DataFrame:
    """One row per look: its seeds, the comparisons it decided, the alpha spent by then."""
    recorded = [x for x in (a.manifest or {}).get("looks") or [] if isinstance(x, dict)]
    arms_run = [len(x.get("arms") or []) for x in recorded] if len(recorded) == len(a.looks) else None
    return pd.DataFrame(
        {
            "Look": a.looks["look"],
            "Seeds": a.looks["seeds"],
            **({"Arms run": arms_run} if arms_run else {}),
            "Decided here": a.looks["decided"],
            "\u03b1 spent, better/worse": [f"{x:.4f}" for x in a.looks["alpha_spent"]],
            "\u03b1 spent, equivalence": [f"{x:.4f}" for x in a.looks["alpha_spent_equivalence"]],
        }
    )


def _looks_caption(a: RunAnalysis) -> str:
    if a.looks_planned:
        declared = ", ".join(str(n) for n in a.plan.looks)
        return (
            f"Looks at the primary comparisons, declared before the run at {declared} seeds. At each look a "
            "comparison still open is tested against that look's nominal level (Lan\u2013DeMets "
            "O'Brien\u2013Fleming alpha spending over the declared looks, group-sequential Holm over the m "
            "comparisons), so the chance of any false better/worse or equivalence claim over all looks stays "
            f"\u2264 \u03b1 = {a.plan.alpha:g}; a decided comparison keeps its verdict and its arm runs no "
            "further seeds. The p-values above are "
            "those at the last look; a verdict needs them below the look's level, stricter than \u03b1 at early "
            'looks. Calibration: STATISTICS.md, "Planned looks".'
        )
    return (
        "Looks at the primary comparisons, not declared before the run: the study was extended after it was "
        f"analysed (`study extend`). Correction for unplanned looks: every look is judged by its own Holm at "
        f"\u03b1 / K (K = {len(a.looks)} looks so far), so the chance of any false claim over the looks stays "
        f"\u2264 \u03b1 = {a.plan.alpha:g} when K is fixed in advance; a verdict an earlier report gave can be "
        "withdrawn as K grows. The first report, at the full \u03b1, was read before the study was extended: "
        "counting every report along the way, a false equivalence claim reached 5.5 % in simulation "
        '(STATISTICS.md, "Planned looks"). Arms run: a decided comparison\'s arm runs no further seeds (the '
        "baseline always does). The p-values above are those at the last look. Declare `looks` in the study file "
        "to keep every look within \u03b1."
    )


def _pp(x: float, pp: bool) -> float:
    return 100 * x if pp else x


def _seeds_to_decide(r) -> tuple[str, str]:
    """(seeds, what they would show): what the primary procedure would need for 80 % power at this
    comparison's estimates: equivalence when the mean difference lies inside the margin, else the simulated
    superiority range."""
    if np.isfinite(r.seeds_equivalence):
        return f"~{int(r.seeds_equivalence)}", "(equivalence)"
    planned = F.seed_range(getattr(r, "seeds_80_min", np.nan), getattr(r, "seeds_80_max", np.nan))
    if planned != F.NA:
        return planned, "(superiority)"
    note = getattr(r, "planning_note", "")
    return F.NA, f"({note})" if isinstance(note, str) and note else ""


def _table_caption(a: RunAnalysis) -> str:
    return (
        "Verdict per primary comparison. Estimate: Hodges\u2013Lehmann paired difference (arm \u2212 baseline) "
        "with its exact signed-rank interval; Holm p: two-sided Wilcoxon signed-rank, Holm over the primary "
        "comparisons; TOST p: paired two one-sided t-tests against \u00b1\u03b4, Holm over the same comparisons; "
        "P(\u2026): Bayesian signed-rank test with a region of practical equivalence \u00b1\u03b4 (Benavoli et al. "
        "2017), a reading of the same differences, not part of the verdict. Seeds to decide: for 80 % power."
    )


def _forest(v: pd.DataFrame, a: RunAnalysis, fig_dir: Path) -> Image:
    pp = a.metric in A.FRACTION_METRICS
    rows = v.assign(significant=v["verdict"].isin(["better", "worse"]), p_holm=v["p_holm_primary"])
    fig = plots.forest_plot(
        rows,
        f"\u0394 {a.label}" + (" (pp)" if pp else ""),
        scale=100.0 if pp else 1.0,
        alpha=a.plan.alpha,
        margin=a.plan.equivalence_margin,
    )
    path = plots.save_figure(fig, fig_dir / "verdicts.png")
    return Image(
        path,
        f"Primary comparisons: Hodges\u2013Lehmann estimate with its {round((1 - a.plan.alpha) * 100)} % "
        f"interval, mean as \u00d7; shaded: the equivalence margin \u00b1{_margin(a)}",
    )


def _what_would_decide(v: pd.DataFrame, a: RunAnalysis) -> str:
    open_ = v[v["verdict"] == "undecided"]
    if open_.empty:
        return "Every primary comparison is decided."
    parts = [
        f"{r.arm_title}: {seeds} {to_show}"
        if seeds == F.NA
        else f"{r.arm_title}: {seeds} seeds {to_show.replace('(', 'to show ').rstrip(')')}".rstrip()
        for r in open_.itertuples(index=False)
        for seeds, to_show in [_seeds_to_decide(r)]
    ]
    n_now = int(v["n"].max())
    seeds = seeds_to_extend(v, tuple(a.plan.looks), n_now)
    command = (
        f" To run them as a new look, keeping every finished trial: `study extend {a.run_dir} --seeds {seeds}`."
        if seeds is not None
        else ""
    )
    return (
        f"What would decide the {len(open_)} undecided comparison(s): {'; '.join(parts)}, at the "
        "differences and spread seen here (a planning figure, not a promise). An undecided verdict means "
        f"the study cannot tell; it is not evidence of no effect.{command}"
    )
