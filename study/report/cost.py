"""Cost-benefit of the pretext phases (issue 17, the paper's "cost-benefit trade-off"): pure table functions.

What a pretext phase cost is recorded per trial (`study.trainables.PRETEXT_COST_FIELDS`, results columns
`pretext_seconds`, `pretext_device`, `pretext_devices`, `pretext_images_seen`, `pretext_flops`). Trials
that share a pretext model (its regimes are one trial; label fractions and reruns of a seed reuse the cached
weights) carry the cost of the one phase that trained it, so costs are counted once per `pretext_key`.

Per arm: the phases it trained (`runs`), the mean cost of one (wall seconds, device-hours = seconds x CPU
threads or GPUs / 3600, images drawn, estimated FLOPs), the study's total device-hours for the arm, and per
(label fraction, regime) cell the paired gain over the baseline (`study.analysis.compare_to_baseline`'s mean
difference with its t-interval: a mean, so that gain per hour is a ratio of means) and the gain per
device-hour of one pretext phase. The fine-tune is not counted: every arm, the baseline included, pays it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from study.spec.schema import COST_COLUMNS, orientation

PHASE_COLUMNS = [
    "arm",
    "task",
    "runs",
    "device",
    "seconds_mean",
    "seconds_sd",
    "device_hours_mean",
    "device_hours_total",
    "images_seen_mean",
    "flops_mean",
]

COST_BENEFIT_COLUMNS = [
    "label_fraction",
    "regime",
    "regime_title",
    *PHASE_COLUMNS,
    "metric",
    "n",
    "gain",
    "gain_ci_low",
    "gain_ci_high",
    "gain_per_device_hour",
    "gain_per_device_hour_ci_low",
    "gain_per_device_hour_ci_high",
]


def pretext_phases(df: pd.DataFrame) -> pd.DataFrame:
    """One row per pretext phase: columns `arm, task, pretext_key, device, seconds, devices, device_hours,
    images_seen, flops` (NaN / None where a run did not record them).

    `df`: the tidy results table (`study.analysis.load_run`; one row per trial x regime). A phase is a
    distinct `(arm, pretext_key)`; its cost is taken from the first row that recorded it. Baseline rows and
    rows without a `pretext_key` (trials that failed before their pretext finished) are left out.
    """
    cols = ["arm", "task", "pretext_key", "device", *COST_COLUMNS]
    if "pretext_key" not in df or df.empty:
        return pd.DataFrame(
            columns=[
                "arm",
                "task",
                "pretext_key",
                "device",
                "seconds",
                "devices",
                "device_hours",
                "images_seen",
                "flops",
            ]
        )
    rows = df[(df["task"] != "none") & df["pretext_key"].notna()].copy()
    rows["device"] = rows["pretext_device"] if "pretext_device" in rows else None
    for c in COST_COLUMNS:
        rows[c] = pd.to_numeric(rows[c], errors="coerce") if c in rows else np.nan
    phases = rows[cols].groupby(["arm", "pretext_key"], sort=False, dropna=False).first().reset_index()
    phases = phases.rename(columns={c: c.removeprefix("pretext_") for c in COST_COLUMNS})
    phases["device_hours"] = phases["seconds"] * phases["devices"] / 3600.0
    return phases[
        ["arm", "task", "pretext_key", "device", "seconds", "devices", "device_hours", "images_seen", "flops"]
    ]


def phase_costs(df: pd.DataFrame) -> pd.DataFrame:
    """Per SSL arm (order of first appearance), the cost of its pretext phases (`PHASE_COLUMNS`).

    `runs`: phases trained; `device`: the devices they ran on ("CPU", a GPU's name; several joined with
    " / "); means over the phases that recorded a cost (sd ddof=1, NaN for one phase); `device_hours_total`:
    the sum over phases, what the study spent on the arm's pretext training. NaN where nothing was recorded
    (runs made before costs were).
    """
    phases = pretext_phases(df)
    out = []
    for arm, g in phases.groupby("arm", sort=False):
        devices = [str(d) for d in dict.fromkeys(g["device"].dropna())]
        seconds = g["seconds"].to_numpy(float)
        timed = seconds[np.isfinite(seconds)]
        hours = g["device_hours"].to_numpy(float)
        out.append(
            {
                "arm": arm,
                "task": g["task"].iloc[0],
                "runs": len(g),
                "device": " / ".join(devices) if devices else None,
                "seconds_mean": timed.mean() if timed.size else np.nan,
                "seconds_sd": timed.std(ddof=1) if timed.size > 1 else np.nan,
                "device_hours_mean": _mean(hours),
                "device_hours_total": hours[np.isfinite(hours)].sum() if np.isfinite(hours).any() else np.nan,
                "images_seen_mean": _mean(g["images_seen"].to_numpy(float)),
                "flops_mean": _mean(g["flops"].to_numpy(float)),
            }
        )
    return pd.DataFrame(out, columns=PHASE_COLUMNS)


def cost_benefit(df: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """The cost-benefit table: one row per (label fraction, regime, SSL arm) of `comparisons`
    (`study.analysis.compare_to_baseline`), with the arm's `phase_costs` and its paired gain.

    `gain`, `gain_ci_low/high`: the mean paired difference arm - baseline and its (1 - alpha) t-interval
    (metric units, fractions for AUC), oriented so that a positive gain is an improvement (for a
    lower-is-better metric, baseline - arm: a loss that falls is a gain; `study.analysis.orientation`);
    `gain_per_device_hour`: `gain / device_hours_mean` (NaN without a
    recorded cost or a zero one), with the gain's interval divided the same way (the cost taken as known:
    it varies far less over seeds than the gain). Columns `COST_BENEFIT_COLUMNS`; empty without comparisons.
    """
    if comparisons.empty:
        return pd.DataFrame(columns=COST_BENEFIT_COLUMNS)
    costs = phase_costs(df).set_index("arm")
    rows: list[dict[str, Any]] = []
    for r in comparisons.to_dict("records"):
        c = costs.loc[r["arm"]].to_dict() if r["arm"] in costs.index else {}
        hours = c.get("device_hours_mean", np.nan)
        per_hour = 1.0 / hours if np.isfinite(hours) and hours > 0 else np.nan
        sign = orientation(r["metric"])  # positive gain = improvement
        gain, low, high = r["mean_diff"] * sign, r["mean_ci_low"] * sign, r["mean_ci_high"] * sign
        low, high = (low, high) if sign > 0 else (high, low)
        rows.append(
            {
                "label_fraction": r["label_fraction"],
                "regime": r["regime"],
                "regime_title": r["regime_title"],
                "arm": r["arm"],
                "task": c.get("task") or r["arm"].split("(")[0],
                "runs": c.get("runs", 0),
                **{k: c.get(k, np.nan) for k in PHASE_COLUMNS[3:]},
                "metric": r["metric"],
                "n": r["n"],
                "gain": gain,
                "gain_ci_low": low,
                "gain_ci_high": high,
                "gain_per_device_hour": gain * per_hour,
                "gain_per_device_hour_ci_low": low * per_hour,
                "gain_per_device_hour_ci_high": high * per_hour,
            }
        )
    return pd.DataFrame(rows, columns=COST_BENEFIT_COLUMNS)


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else np.nan
