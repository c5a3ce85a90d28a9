"""The report's opening: its title, what was run, and the Method section (one paragraph per kind of test,
each only when that test ran)."""

from __future__ import annotations

import numpy as np

from study import analysis as A
from study.report import formatting as F
from study.report import labels as L
from study.report import pretext_tables as PT
from study.report.document import Block, Heading, Para
from study.report.run_analysis import RunAnalysis
from study.stats import FRIEDMAN_MIN_BLOCKS
from study.tasks import registry

TITLE = "Self-supervised pre-training for melanoma classification: study report"


def title_blocks(a: RunAnalysis) -> list[Block]:
    df = a.df
    arms, regimes = A.arm_order(df["arm"]), A.regime_order(df["regime"])
    seeds = sorted(df["seed"].unique())
    preset = (a.manifest or {}).get("preset")
    fractions = a.fractions
    if a.several_fractions:
        labels = (
            f" \u00d7 {len(fractions)} label fractions ({', '.join(F.percent(f) for f in fractions)} of the "
            "training labels; for one seed every arm fine-tunes on the same labelled subset, and a smaller "
            "fraction's subset lies inside a larger one's)"
        )
    else:
        # One fraction: said only when it is not all labels (a report of all labels reads as before).
        labels = (
            "" if fractions[0] == 1.0 else f"; fine-tuned on {F.percent(fractions[0])} of the training labels"
        )
    return [
        Heading(1, TITLE),
        Para(
            f"Run: {a.run_dir.name}" + (f" (preset {preset})" if preset else "") + f". "
            f"{df['trial_id'].nunique()} trials: {len(arms)} arm(s) "
            f"({', '.join(L.arm_title(x) for x in arms)}) \u00d7 {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))})"
            + (labels if a.several_fractions else "")
            + f"; early-stopping regimes: {', '.join(L.regime_title(r) for r in regimes)}"
            + ("" if a.several_fractions else labels)
            + "."
        ),
    ]


def method_blocks(a: RunAnalysis) -> list[Block]:
    """What was done, one paragraph per kind of test, each only when that test ran."""
    paras = [_comparison_method(a), _friedman_method(a), _pretext_method(a), _probe_method(a)]
    return [Heading(2, "Method"), *(Para(p) for p in paras if p)]


def _comparison_method(a: RunAnalysis) -> str:
    comp, alpha = a.comparisons, a.alpha
    design = (
        "Each seed fixes the data split, the validation split and the fine-tune order for every arm; the "
        "stopping epoch of each early-stopping regime is chosen on validation loss, never on a test metric."
    )
    if comp.empty:
        why = "the table is not paired by seed" if a.pairing_error else "only the baseline arm was run"
        return f"{design} No paired comparison was computed ({why}): every table below is descriptive."
    m, n_ssl, n_reg = len(comp), comp["arm"].nunique(), comp["regime"].nunique()
    several, n_frac = a.several_fractions, comp[A.LABEL_FRACTION].nunique()
    level = round((1 - alpha) * 100)
    directed = A.metric_direction(a.metric)
    sign_text = f"higher ({a.label}: no direction)"
    sign_text = "better (also for lower-is-better metrics)" if directed else sign_text
    beats = "beats" if directed else "is higher than"
    if a.family == "primary":
        primary = comp[comp["holm_family"] == "primary"]
        cell = L.cell_title(primary[A.LABEL_FRACTION].iloc[0], primary["regime_title"].iloc[0], several)
        family = (
            f"the m = {len(primary)} comparison(s) of the declared primary cell ({cell}); the other "
            f"{m - len(primary)} comparison(s) are one secondary, exploratory family, Holm-corrected on their own"
        )
    elif a.family == "study":
        family = (
            f"all m = {m} comparisons of the study ({n_ssl} self-supervised arm(s) \u00d7 {n_reg} regime(s)"
            + (f" \u00d7 {n_frac} label fractions)" if several else ")")
        )
    elif several:
        family = f"the m = {n_ssl} comparison(s) within each regime of each label fraction"
    else:
        family = f"the m = {n_ssl} comparison(s) within each regime (each regime is one row of the paper's Table 1)"
    where = (
        "separately in each regime of each label fraction (paired on seed and fraction: for one seed every arm "
        "fine-tunes on the same labelled subset)"
        if several
        else "separately in each regime"
    )
    return (
        f"{design} Each self-supervised arm is compared with the no-self-supervision baseline through "
        f"per-seed paired differences (arm \u2212 baseline) of test {a.label}, {where}; "
        "differences equal up to floating-point error (relative 1e-9) count as ties or zeros. Headline test: "
        "two-sided Wilcoxon signed-rank test on the paired differences, counted over Walsh averages with "
        "the exact null distribution (exact without ties; with ties or zero differences exact and "
        "conservative, zeros and ties handled as in the Hodges\u2013Lehmann interval, which is the test "
        "inverted; a comparison whose differences are all zero has p = 1), "
        f"Holm-corrected across {family} at \u03b1 = {alpha:g}. {_studywise_text(a)} Intervals "
        f"({level} %, not adjusted for multiplicity): the Hodges\u2013Lehmann estimate of the paired "
        "difference with its exact signed-rank confidence interval (Walsh averages), the interval that "
        f"belongs to the headline test (its inversion: it excludes 0 exactly when the uncorrected Wilcoxon "
        f"p < {alpha:g}; achieved level in comparisons.csv, hl_ci_level), and the t-interval of "
        "the mean difference. Also reported: paired t-test, Hedges' g_z, matched-pairs rank-biserial "
        f"correlation r_rb and the share of seeds on which the arm {beats} the baseline (ties count half), all "
        f"positive when the arm is {sign_text}, and a planning range of seeds "
        "for 80 % power of the headline procedure itself (simulated). Seeds whose trial diverged or failed "
        "are dropped pairwise and listed under Excluded trials. Other metrics are descriptive only."
    )


def _studywise_text(a: RunAnalysis) -> str:
    """The study-wise false-positive rate of the chosen family (and of the other), from the simulation."""
    r, comp = a.null_rates, a.comparisons
    if not r:
        return ""
    n, k, n_reg = int(comp["n"].median()), comp["arm"].nunique(), comp["regime"].nunique()
    n_frac = comp[A.LABEL_FRACTION].nunique()
    if a.family == "primary":
        return _primary_rates_text(a, n, k)
    chosen, other = (
        ("studywise_study", "studywise_regime")
        if a.family == "study"
        else (
            "studywise_regime",
            "studywise_study",
        )
    )
    if a.several_fractions:
        other_name = "per regime and label fraction" if a.family == "study" else "across the whole study"
        design = f"{k} arm(s) \u00d7 {n_reg} regime(s) \u00d7 {n_frac} label fractions"
        independent = "regimes and fractions independent"
    else:
        other_name = "per regime" if a.family == "study" else "across the whole study"
        design, independent = f"{k} arm(s) \u00d7 {n_reg} regime(s)", "regimes independent"
    text = (
        "Study-wise false-positive rate (the chance that a study with no true effect lists at least one "
        f"significant comparison), simulated for this design ({n} seeds, {design}, "
        f"{r['n_sim']:,} null studies, normal differences, {independent}): "
        f"{F.sim_rate(r[chosen], r['n_sim'])} with this family, {F.sim_rate(r[other], r['n_sim'])} with Holm "
        f"{other_name}."
    )
    need = int(comp["min_n_for_significance"].max())
    if a.family == "study" and n < need:
        text += f" With {n} seeds no comparison can be significant in this family (it needs at least {need})."
    return text


def _primary_rates_text(a: RunAnalysis, n: int, k: int) -> str:
    """The false-positive rates of the primary family and of the secondary one, from the simulation."""
    r = a.null_rates
    text = (
        "False-positive rates (the chance that a study with no true effect lists at least one significant "
        f"comparison), simulated for this design ({n} seeds, {k} arm(s) per cell, {r['n_sim']:,} null studies, "
        f"normal differences, cells independent): {F.sim_rate(r['familywise_regime'], r['n_sim'])} in the "
        "primary family (what the verdicts risk)"
    )
    if np.isfinite(r.get("studywise_secondary", np.nan)):
        text += f", {F.sim_rate(r['studywise_secondary'], r['n_sim'])} in the secondary family"
    text += "."
    need = int(a.comparisons["min_n_for_significance"].min())
    if n < need:
        text += f" With {n} seeds no comparison can be significant (it needs at least {need})."
    return text


def _friedman_method(a: RunAnalysis) -> str:
    if not any(np.isfinite(f["p"]) for f in a.friedmans):
        return ""
    return (
        f"Across all arms: a Friedman test per regime{' and label fraction' if a.several_fractions else ''} on "
        f"the seeds complete for every arm (from {FRIEDMAN_MIN_BLOCKS} complete seeds up), as the "
        "Iman\u2013Davenport F, with mean ranks and each self-supervised arm compared with the baseline from "
        f"them (Holm over those comparisons, \u03b1 = {a.alpha:g}; Dem\u0161ar 2006); secondary to the paired tests."
    )


def _pretext_method(a: RunAnalysis) -> str:
    if a.pretext_refs.empty:
        return ""
    used = {n for r in a.pretext_refs["reference"] for n in r.split("/")}
    titles = ", ".join(L.REFERENCE_TITLES[n] for n in PT.TRIVIAL_REFERENCES if n in used)
    inpainted = " and ".join(t.title.lower() for t in registry.TASKS.values() if "biharmonic" in t.references)
    classical = (
        f" The {inpainted} is also compared with a classical (biharmonic) inpainter on a subsample of "
        "test images, a stronger bar that is not part of the verdict."
    )
    return (
        "Each pretext metric is set beside the best trivial (learning-free) reference on the same test "
        "pairs" + (f" ({titles})" if titles else "") + "; a pretext counts as learned on a seed when the "
        "model beats that reference on its task's headline metric."
        + (classical if "biharmonic" in used else "")
    )


def _probe_method(a: RunAnalysis) -> str:
    if a.probe.empty:
        return ""
    text = (
        "Linear probe: a logistic regression on the frozen, globally pooled encoder features (after the "
        "pretext phase; for the baseline the encoder as initialised, random or ImageNet weights), one per "
        "trial, scored by test AUC"
    )
    k = len(a.probe_comparisons)
    if k:
        text += (
            "; each self-supervised arm is compared with the baseline by a two-sided Wilcoxon signed-rank "
            f"test on the per-seed paired differences, Holm-corrected across the {k} "
            + (
                "comparisons (self-supervised arms \u00d7 label fractions)"
                if a.several_fractions
                else "self-supervised arm(s)"
            )
            + f" at \u03b1 = {a.alpha:g}"
        )
    return text + "."
