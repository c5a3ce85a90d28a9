"""The report's tables built on ``study.analysis``: its results with titles and sentences added (as the CSV
files hold them), the label-efficiency tables, the linear probe and the learning curves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from study import analysis as A
from study.analysis import (
    LABEL_FRACTION,
    arm_better,
    arm_order,
    baseline_arm,
    higher_is_better,
    label_fractions,
    with_label_fraction,
)
from study.report.labels import arm_title, regime_title, titled
from study.report.pretext_tables import float_column
from study.report.sentences import friedman_note, headline, underpowered_text
from study.stats import holm, prob_improvement, signed_rank_pvalues


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """``analysis.summarise`` with each arm's title (``arm_title``, after ``arm``): summary.csv."""
    return titled(A.summarise(df), keys=("arm",))


def comparison_table(comp: pd.DataFrame, alpha: float, with_fraction: bool) -> pd.DataFrame:
    """``analysis.compare_to_baseline``'s rows with titles (``regime_title``, ``arm_title``), the ``warning``
    of an underpowered comparison (after ``underpowered``) and the ``headline`` sentence (last);
    ``with_fraction``: the study has several label fractions, so sentences name the fraction."""
    out = titled(comp)
    records = out.to_dict("records")
    warnings = [underpowered_text(r, alpha, with_fraction) if r["underpowered"] else "" for r in records]
    out.insert(out.columns.get_loc("underpowered") + 1, "warning", warnings)
    out["headline"] = [headline(r, alpha, with_fraction=with_fraction) for r in records]
    return out


def friedman_result(
    df: pd.DataFrame, metric: str, regime: str, alpha: float, **kwargs: Any
) -> dict[str, Any]:
    """``analysis.friedman`` (same arguments) with ``note``: why a value is NaN, else ""."""
    res = A.friedman(df, metric, regime, alpha, **kwargs)
    return res | {"note": friedman_note(res)}


def label_efficiency(summary: pd.DataFrame, metric: str, confidence: float = 0.95) -> pd.DataFrame:
    """Each arm's mean ``metric`` per label fraction and regime with the t-interval of the mean over seeds.

    ``summary``: ``summary_table`` output. Columns ``label_fraction, regime, regime_title, arm, arm_title, n,
    mean, sd, ci_low, ci_high`` (metric units; ``mean +- t_{n-1}(1 - a/2) sd / sqrt(n)``, NaN for n < 2). An
    interval per arm, unpaired: two arms' intervals overlap far more than their paired difference's does
    (the seed effect stays in), so the test of a difference is ``compare_to_baseline``.
    """
    s = summary[summary["metric"] == metric]
    n = s["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(1 - (1 - confidence) / 2, np.where(n > 1, n - 1, np.nan)) * s["sd"] / np.sqrt(n)
    out = s.assign(
        regime_title=s["regime"].map(regime_title), ci_low=s["mean"] - half, ci_high=s["mean"] + half
    )
    cols = [
        LABEL_FRACTION,
        "regime",
        "regime_title",
        "arm",
        "arm_title",
        "n",
        "mean",
        "sd",
        "ci_low",
        "ci_high",
    ]
    return out[cols].reset_index(drop=True)


FRACTION_SUMMARY_COLUMNS = [LABEL_FRACTION, "m", "n_better", "n_worse", "mean_hl", "mean_diff", "best"]


def fraction_summary(comp: pd.DataFrame) -> pd.DataFrame:
    """Per label fraction, what its rows of ``compare_to_baseline`` say together (descriptive).

    One row per fraction (ascending): ``m`` comparisons; ``n_better`` / ``n_worse`` significant ones (Holm,
    the table's family) with the arm better / worse; ``mean_hl`` and ``mean_diff`` the mean over the
    fraction's comparisons (arms x regimes) of the Hodges-Lehmann estimate and the mean difference (arm -
    baseline, metric units): averaged over every arm and regime, so not inflated by picking the best one;
    ``best`` the index label in ``comp`` of the comparison with the most favourable HL estimate (the largest
    for higher-is-better metrics; NaN when none is finite).
    """
    rows = []
    for f, g in with_label_fraction(comp).groupby(LABEL_FRACTION, sort=True):
        sign = 1.0 if higher_is_better(str(g["metric"].iloc[0])) else -1.0
        better = arm_better(g["hl_estimate"], g["mean_diff"], str(g["metric"].iloc[0]))
        sig = g["significant"].astype(bool).to_numpy()
        hl = g["hl_estimate"].astype(float) * sign
        rows.append(
            {
                LABEL_FRACTION: float(f),
                "m": len(g),
                "n_better": int((sig & better).sum()),
                "n_worse": int((sig & ~better).sum()),
                "mean_hl": float(np.nanmean(g["hl_estimate"])) if g["hl_estimate"].notna().any() else np.nan,
                "mean_diff": float(np.nanmean(g["mean_diff"])) if g["mean_diff"].notna().any() else np.nan,
                "best": hl.idxmax() if hl.notna().any() else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=FRACTION_SUMMARY_COLUMNS)


def probe_table(df: pd.DataFrame) -> pd.DataFrame:
    """Linear-probe test AUC per label fraction and arm over seeds (one value per trial, whatever its
    fine-tune did; the probe is fitted on the trial's labelled training images, so it depends on the label
    fraction).

    Columns ``label_fraction, arm, arm_title, n, mean, sd, c_median`` (AUC as a fraction; sd ddof=1;
    ``c_median`` the median chosen inverse regularisation ``probe_c``). Empty when the table has no finite
    ``probe_auc``.
    """
    cols = [LABEL_FRACTION, "arm", "arm_title", "n", "mean", "sd", "c_median"]
    per_trial = _probe_rows(df)
    rows = []
    for f in label_fractions(per_trial) if len(per_trial) else []:
        at_f = per_trial[per_trial[LABEL_FRACTION] == f]
        for arm in arm_order(at_f["arm"]):
            g = at_f[at_f["arm"] == arm]
            x = g["probe_auc"].to_numpy(dtype=float)
            c = float_column(g, "probe_c")
            rows.append(
                {
                    LABEL_FRACTION: f,
                    "arm": arm,
                    "arm_title": arm_title(arm),
                    "n": x.size,
                    "mean": x.mean(),
                    "sd": x.std(ddof=1) if x.size > 1 else np.nan,
                    "c_median": float(np.median(c[np.isfinite(c)])) if np.isfinite(c).any() else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=cols)


def _probe_rows(df: pd.DataFrame) -> pd.DataFrame:
    # probe_auc repeats on every regime row of a trial: one row per label fraction x arm x seed carries it.
    df = with_label_fraction(df)
    if "probe_auc" not in df:
        return df.iloc[0:0].assign(probe_auc=pd.Series(dtype=float))
    x = df.assign(probe_auc=pd.to_numeric(df["probe_auc"], errors="coerce").astype(float))
    return x[np.isfinite(x["probe_auc"].to_numpy())].drop_duplicates([LABEL_FRACTION, "arm", "seed"])


PROBE_COMPARISON_COLUMNS = [
    LABEL_FRACTION,
    "arm",
    "arm_title",
    "n",
    "mean_baseline",
    "mean_arm",
    "mean_diff",
    "sd_diff",
    "p_wilcoxon",
    "wilcoxon_method",
    "p_holm",
    "prob_improvement",
]


def probe_comparisons(df: pd.DataFrame) -> pd.DataFrame:
    """Each SSL arm's probe AUC vs the baseline's per label fraction, paired by seed (seeds missing either
    value dropped).

    One row per label fraction x SSL arm: ``label_fraction, arm, arm_title, n, mean_baseline, mean_arm,
    mean_diff, sd_diff`` (fractions; diff = arm - baseline), ``p_wilcoxon`` (two-sided,
    ``signed_rank_pvalues``), ``wilcoxon_method``, ``p_holm`` (Holm across every row: the SSL arms x label
    fractions), ``prob_improvement``. ``PairingError`` without one baseline arm.
    """
    cols = PROBE_COMPARISON_COLUMNS
    per_trial = _probe_rows(df)
    if per_trial.empty:
        return pd.DataFrame(columns=cols)
    base = baseline_arm(df)
    rows = []
    for f in label_fractions(per_trial):
        at_f = per_trial[per_trial[LABEL_FRACTION] == f]
        wide = at_f.pivot(index="seed", columns="arm", values="probe_auc")
        for arm in [a for a in arm_order(df["arm"]) if a != base]:
            if base not in wide or arm not in wide:
                continue
            pair = wide[[base, arm]].dropna()
            b, a = pair[base].to_numpy(dtype=float), pair[arm].to_numpy(dtype=float)
            d = a - b
            p, _, method = signed_rank_pvalues(d[None, :]) if d.size else ([np.nan], None, ["n/a"])
            rows.append(
                {
                    LABEL_FRACTION: f,
                    "arm": arm,
                    "arm_title": arm_title(arm),
                    "n": d.size,
                    "mean_baseline": b.mean() if d.size else np.nan,
                    "mean_arm": a.mean() if d.size else np.nan,
                    "mean_diff": d.mean() if d.size else np.nan,
                    "sd_diff": d.std(ddof=1) if d.size > 1 else np.nan,
                    "p_wilcoxon": float(p[0]),
                    "wilcoxon_method": str(method[0]),
                    "prob_improvement": prob_improvement(d),
                }
            )
    out = pd.DataFrame(rows, columns=[c for c in cols if c != "p_holm"])
    out["p_holm"] = holm(out["p_wilcoxon"].to_numpy(dtype=float)) if len(out) else []
    return out[cols]


def learning_curves(
    history: pd.DataFrame,
    metrics: Sequence[str] = ("val_loss", "val_auc"),
    phase: str = "finetune",
    exclude_trials: Iterable[str] = (),
) -> pd.DataFrame:
    """Mean and SD over seeds of per-epoch curves, per label fraction and arm. Long format.

    ``history``: one row per trial x phase x epoch (``load_history``), with ``label_fraction`` (1.0 when the
    file has none: older runs). Trials in ``exclude_trials`` (e.g. diverged ones, whose curves hold inf/NaN)
    are left out. Returns columns ``label_fraction, arm, arm_title, metric, epoch, n, mean, sd`` (n = seeds
    with a finite value at that epoch; sd NaN when n < 2).
    """
    cols = [LABEL_FRACTION, "arm", "arm_title", "metric", "epoch", "n", "mean", "sd"]
    history = with_label_fraction(history)
    h = history[(history["phase"] == phase) & ~history["trial_id"].isin(set(exclude_trials))]
    keys = [LABEL_FRACTION, "arm", "epoch"]
    frames = []
    for m in metrics:
        if m not in h.columns:
            continue
        # Coerced, not cast: a frame that did not come through load_history may hold text in any column.
        x = h[keys].assign(
            **{LABEL_FRACTION: pd.to_numeric(h[LABEL_FRACTION], errors="coerce").astype(float)},
            **{m: pd.to_numeric(h[m], errors="coerce").astype(float)},
        )
        x = x[np.isfinite(x[m].to_numpy())]
        if x.empty:
            continue
        g = x.groupby(keys)[m].agg(n="count", mean="mean", sd=lambda s: s.std(ddof=1)).reset_index()
        g["metric"] = m
        frames.append(g)
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    out["arm_title"] = out["arm"].map(arm_title)
    order = {a: i for i, a in enumerate(arm_order(out["arm"]))}
    out = out.sort_values(
        [LABEL_FRACTION, "metric", "arm", "epoch"], key=lambda s: s.map(order) if s.name == "arm" else s
    )
    return out[cols].reset_index(drop=True)
