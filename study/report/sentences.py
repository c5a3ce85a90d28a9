"""Sentences the report states about the numbers of ``study.analysis``: a comparison's headline, why it is
underpowered, why a trial or seed was excluded, what would confound the comparison, why a Friedman test is
missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from study.analysis import DEFAULT_LABEL_FRACTION, FRACTION_METRICS, LABEL_FRACTION, Pairing, arm_better
from study.report.formatting import bound, format_diff, format_p
from study.report.labels import arm_title, cell_title, direction_words, metric_label, regime_title
from study.stats import FRIEDMAN_MIN_BLOCKS


def underpowered_text(row: dict[str, Any], alpha: float, with_fraction: bool = False) -> str:
    """Why comparison ``row`` (titled, ``tables.comparison_table``) cannot be significant whatever the data."""
    k, n = int(row["n_nonzero"]), int(row["n"])
    m, need = int(row["family_size"]), int(row["min_n_for_significance"])
    floor = 2 / 2**k if k else 1.0
    ran = f"{n} paired seed{'s' if n != 1 else ''}"
    if k == 0:
        have = f"{ran}, every difference zero: no evidence either way (p = 1)"
    elif k < n:
        have = f"{ran}, only {k} non-zero difference{'s' if k != 1 else ''}"
    else:
        have = ran
    return (
        f"{row['arm_title']} vs baseline, {_where(row, with_fraction)}: {have}. An exact two-sided Wilcoxon test "
        f"on {k} non-zero difference(s) cannot give p below 2/2^{k} = {floor:.3g}, above Holm's smallest "
        f"threshold {alpha:g}/{m} = {alpha / m:.3g}, so this comparison cannot be significant whatever the "
        f"data; at least {need} non-zero paired differences are needed."
    )


def _where(row: dict[str, Any], with_fraction: bool) -> str:
    return cell_title(row.get(LABEL_FRACTION, DEFAULT_LABEL_FRACTION), row["regime_title"], with_fraction)


def headline(row: pd.Series | dict[str, Any], alpha: float = 0.05, *, with_fraction: bool = False) -> str:
    """Plain sentence for one comparison row, e.g. ``"Corruption removal vs baseline, patience 10: +1.3 pp
    AUC (Hodges–Lehmann; mean +1.4 pp), 95 % signed-rank CI [−0.3, 3.1], Holm p = 0.21, n = 8 seeds — not
    significant"``. The interval is the one of the headline test (``hodges_lehmann_ci``). ``with_fraction``
    (a study of several label fractions): the place reads ``"5 % labels, patience 10"``."""
    r = dict(row)
    metric = r["metric"]
    scale, unit = (100.0, " pp") if metric in FRACTION_METRICS else (1.0, "")
    n = int(r["n"])
    head = f"{r['arm_title']} vs baseline, {_where(r, with_fraction)}: "
    if n == 0:
        return head + "no paired seeds (every pair excluded) \u2014 not tested"
    est = format_diff(r["hl_estimate"], metric).removesuffix(" pp")
    mean = format_diff(r["mean_diff"], metric)
    ci = (
        f"{round((1 - alpha) * 100):g} % signed-rank CI [{bound(r['hl_ci_low'] * scale, bool(unit))}, "
        f"{bound(r['hl_ci_high'] * scale, bool(unit))}]"
        if np.isfinite(r["hl_ci_low"])
        else f"signed-rank CI n/a (n = {n})"
    )
    dropped = r.get("dropped_seeds") or ""
    n_text = f"n = {n} seed{'s' if n != 1 else ''}"
    if dropped:
        n_text += f" ({len(str(dropped).split(','))} excluded)"
    verdict = "significant" if r["significant"] else "not significant"
    if r["significant"]:
        up, down = direction_words(metric)
        verdict += f" (arm {up if arm_better(r['hl_estimate'], r['mean_diff'], metric) else down})"
    if r.get("underpowered"):
        k = int(r.get("n_nonzero", n))
        verdict += (
            "; every difference zero"
            if k == 0
            else f"; underpowered ({k} non-zero differences, \u2265 {int(r['min_n_for_significance'])} needed)"
        )
    return (
        f"{head}{est}{unit} {metric_label(metric)} (Hodges\u2013Lehmann; mean {mean}), {ci}, "
        f"Holm p {format_p(r['p_holm'])}, {n_text} \u2014 {verdict}"
    )


def exclusion_reason(row: Any) -> str:
    """``"diverged at epoch 12"``, ``"error: <last line of the message>"`` for an excluded trial's row."""
    if row.status == "diverged":
        ep = row.diverged_epoch
        return f"diverged at epoch {int(ep)}" if pd.notna(ep) else "diverged (non-finite loss)"
    msg = row.error if isinstance(row.error, str) and row.error else "no message recorded"
    first = msg.strip().splitlines()[-1] if msg.strip() else msg  # a traceback's last line names the error
    return f"error: {first[:200]}"


def consistency_warnings(df: pd.DataFrame) -> list[str]:
    """Conditions that would confound the arm comparison (different data, image size or encoder between
    trials). Returns plain sentences; empty when the table is consistent."""
    out = []
    for col, what in (
        ("data_fingerprint", "data sets"),
        ("image_size", "image sizes"),
        ("encoder", "encoders"),
    ):
        values = df[col].dropna().unique() if col in df.columns else []
        if len(values) > 1:
            per_arm = (
                df.dropna(subset=[col]).groupby("arm")[col].agg(lambda s: ", ".join(map(str, sorted(set(s)))))
            )
            detail = "; ".join(f"{arm_title(a)}: {v}" for a, v in per_arm.items())
            out.append(
                f"Trials ran on {len(values)} different {what} ({detail}); arms are only comparable on the same "
                f"{col.replace('_', ' ')}: analyse each separately."
            )
    return out


def dropped_reason(row: Any, metric: str) -> str:
    """Why a value of ``Pairing.dropped`` was left out: its trial's exclusion, or its missing metric."""
    return exclusion_reason(row) if row.status != "ok" else f"{metric} is missing"


def dropped_notes(pairing: Pairing) -> list[str]:
    """One plain sentence per value ``check_pairing`` dropped, for the report."""
    out = []
    for r in pairing.dropped.itertuples(index=False):
        scope = (
            "every comparison"
            if r.arm == pairing.baseline
            else f"the {arm_title(r.arm)} vs baseline comparison"
        )
        where = cell_title(r.label_fraction, regime_title(r.regime), pairing.several_fractions)
        out.append(
            f"{where}: seed {r.seed} dropped from {scope} ({arm_title(r.arm)}, trial {r.trial_id}: "
            f"{dropped_reason(r, pairing.metric)})"
        )
    return out


def friedman_note(result: dict[str, Any]) -> str:
    """Why a Friedman result (``analysis.friedman``) has no statistic; "" when it has one."""
    k, n = result["k"], result["n"]
    if k < 3:
        return f"Friedman needs at least 3 arms (this regime has {k}); see the paired comparison"
    if n < FRIEDMAN_MIN_BLOCKS:
        return (
            f"Friedman needs at least {FRIEDMAN_MIN_BLOCKS} complete seeds (this regime has {n}): on fewer "
            "blocks its p-value approximations do not hold"
        )
    if not np.isfinite(result["chi2"]):
        return "all arms tie on every seed: no ranking to test"
    return ""
