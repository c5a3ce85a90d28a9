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
    label_fractions,
    orientation,
    with_label_fraction,
)
from study.report.labels import arm_title, regime_title, titled
from study.report.pretext_tables import float_column
from study.report.sentences import friedman_note, headline, underpowered_text
from study.stats import hodges_lehmann_ci, holm, prob_improvement, signed_rank_pvalues

SUMMARY_COLUMNS = [
    A.LABEL_FRACTION,
    "regime",
    "arm",
    "metric",
    "n",
    "mean",
    "sd",
    "median",
    "q1",
    "q3",
]


def summarise(df: pd.DataFrame, metrics: Sequence[str] = A.SUMMARY_METRICS) -> pd.DataFrame:
    """Per label fraction x regime x arm x metric: ``n, mean, sd, median, q1, q3`` over seeds, status-ok rows.

    Long format, columns ``SUMMARY_COLUMNS`` (``label_fraction, regime, arm, metric, n, mean, sd, median, q1,
    q3``); rows ordered by label fraction, regime, arm (baseline first), then ``metrics`` order.
    SD uses ddof=1 (NaN when n < 2). Descriptive: all valid seeds of an arm count, also those whose pair was
    dropped from a comparison.
    """
    cols = [A.metric_column(m, df.columns) for m in metrics]
    df = A.with_label_fraction(df)
    valid = df[df["status"] == "ok"]
    groups = {(float(f), r, a): g for (f, r, a), g in valid.groupby([A.LABEL_FRACTION, "regime", "arm"])}
    rows = []
    for f, regime in A.cells(df):
        for arm in A.arm_order(df["arm"]):
            g = groups.get((f, regime, arm), valid.iloc[0:0])
            for col in cols:
                x = g[col].to_numpy(dtype=float, na_value=np.nan)
                x = x[np.isfinite(x)]
                n = x.size
                rows.append(
                    {
                        A.LABEL_FRACTION: f,
                        "regime": regime,
                        "arm": arm,
                        "metric": col,
                        "n": n,
                        "mean": x.mean() if n else np.nan,
                        "sd": x.std(ddof=1) if n > 1 else np.nan,
                        "median": np.median(x) if n else np.nan,
                        "q1": np.quantile(x, 0.25) if n else np.nan,
                        "q3": np.quantile(x, 0.75) if n else np.nan,
                    }
                )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """``summarise`` with each arm's title (``arm_title``, after ``arm``): summary.csv."""
    return titled(summarise(df), keys=("arm",))


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
    ``best`` the index label in ``comp`` of the comparison with the most favourable HL estimate (the smallest
    for lower-is-better metrics, else the largest; NaN when none is finite; picked after looking, so the report
    does not print it with its unadjusted interval). For a metric without a direction
    (``analysis.metric_direction``: stop epoch) "better" / "worse" read "higher" / "lower".
    """
    rows = []
    for f, g in with_label_fraction(comp).groupby(LABEL_FRACTION, sort=True):
        sign = orientation(str(g["metric"].iloc[0]))
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


def gain_trend(gains: np.ndarray) -> dict[str, Any]:
    """The trend test of ``fraction_trend`` on ``gains`` ``(n_seeds, n_fractions)`` (fractions ascending; rows
    with a NaN are dropped): per seed the least-squares slope of the gain on the fraction's rank 1..F (with
    two fractions, the difference), then the two-sided Wilcoxon signed-rank test of the headline
    (``signed_rank_pvalues``) on the slopes, and their Hodges-Lehmann estimate ``slope``. Keys ``n``,
    ``n_fractions``, ``slope``, ``p``; NaN slope and p below 2 fractions or 2 complete seeds."""
    g = np.asarray(gains, dtype=float)
    g = g[np.isfinite(g).all(axis=1)]
    n, f = g.shape
    out = {"n": int(n), "n_fractions": int(f), "slope": np.nan, "p": np.nan}
    if f < 2 or n < 2:
        return out
    x = np.arange(1, f + 1) - (f + 1) / 2
    slopes = (g - g.mean(axis=1, keepdims=True)) @ x / (x @ x)
    p = float(signed_rank_pvalues(slopes[None, :])[0][0])
    return out | {"slope": float(hodges_lehmann_ci(slopes)[0]), "p": p}


def fraction_trend(df: pd.DataFrame, metric: str, pairing: A.Pairing | None = None) -> dict[str, Any]:
    """The declared trend test of the gain across label fractions: one test per study, always this one.

    Per seed and label fraction, the gain = the mean over every self-supervised arm and regime of the paired
    difference arm - baseline, oriented so that + = arm better (``orientation``; higher for a metric
    without a direction); seeds complete in every cell only. Then ``gain_trend``: the per-seed slope over
    the fractions' ranks and a signed-rank test of the slopes (``slope`` < 0: the gain shrinks as labels are
    added). Averaging over the arms and regimes first picks nothing after looking. Keys as ``gain_trend``.
    """
    pairing = A.check_pairing(df, metric) if pairing is None else pairing
    fractions = sorted(pairing.fractions)
    seeds = sorted({int(s) for cell in pairing.seeds.values() for s in cell})
    gains = np.full((len(seeds), len(fractions)), np.nan)
    for j, f in enumerate(fractions if len(pairing.arms) > 1 else []):
        per_regime = []
        for regime in pairing.regimes:
            x, cell_seeds, _ = A.paired_matrix(df, metric, regime, label_fraction=f, pairing=pairing)
            d = pd.DataFrame(x[:, 1:] - x[:, :1], index=cell_seeds).reindex(seeds)
            per_regime.append(d.to_numpy())
        # A seed missing any arm or regime of the fraction gets NaN (dropped): every gain averages the same cells.
        gains[:, j] = np.concatenate(per_regime, axis=1).mean(axis=1) * orientation(metric)
    return gain_trend(gains)


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
