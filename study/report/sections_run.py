"""The sections about the run itself: the cost of the pretext phases against what they bought, excluded
trials, the data and leakage check, and the run manifest."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from study import analysis as A
from study.report import formatting as F
from study.report import labels as L
from study.report import results_table as R
from study.report import sentences as SN
from study.report.document import Block, Box, Heading, Para, Pre, Table
from study.report.run_analysis import RunAnalysis
from study.tasks import registry


def cost_blocks(a: RunAnalysis) -> list[Block]:
    """The paper's "cost-benefit trade-off": what each arm's pretext phases cost, and the gain they bought."""
    blocks: list[Block] = [Heading(2, "Cost-benefit of the pretext phases")]
    costs = a.phase_costs
    if costs.empty:
        blocks.append(Para(f"{F.NA}: no self-supervised arm finished a pretext phase in this run."))
        return blocks
    if not np.isfinite(costs["seconds_mean"].to_numpy(float)).any():
        blocks.append(
            Para(
                f"{F.NA}: this run recorded no pretext cost (runs made before costs were recorded: "
                "pretext_seconds and the other pretext cost columns are missing from results.csv)."
            )
        )
        return blocks
    kinds = {"GPU" if d and d != "CPU" else "CPU" for d in costs["device"].dropna()}
    unit = f"{kinds.pop()}-h" if len(kinds) == 1 else "device-h"
    # Tasks whose target network (followed by EMA) runs a forward pass of its own on every input.
    targets = " and ".join(t.title for t in registry.TASKS.values() if getattr(t.step, "ema_target", False))
    blocks.append(
        Table(
            _cost_display(costs, unit),
            f"One row per self-supervised arm; a phase is one trained pretext model (trials sharing it, its "
            f"regimes and label fractions, count it once). Time: wall seconds of the phase, mean ± SD "
            f"over phases; {unit}: seconds × CPU threads or GPUs / 3600, per phase and for the whole "
            "study; images: training images drawn (two-view tasks see each as two views); FLOPs: estimated "
            f"training FLOPs (3 × the forward pass per training input, plus {targets}'s target pass; "
            "convolutions and dense layers only, models.forward_flops). Full precision in cost_benefit.csv.",
        )
    )
    cb = a.cost_benefit
    if cb.empty:
        blocks.append(Para(f"{F.NA}: no comparison with the baseline, so no gain to set against the cost."))
        return blocks
    metric = cb["metric"].iloc[0]
    blocks.append(
        Table(
            _gain_display(cb, metric, unit, a.alpha, a.several_fractions),
            f"Gain: the mean paired difference arm − baseline in {L.metric_label(metric)} with its "
            f"{round((1 - a.alpha) * 100)} % t-interval (percentage points for fractions; not adjusted for "
            f"multiplicity: the Holm-corrected tests are above), and that gain and interval per {unit} of "
            "one pretext phase (the phase's mean cost taken as known). An interval that includes 0 means "
            "the study cannot tell whether the hours bought anything. The fine-tune is not counted: every "
            "arm, the baseline included, pays it.",
        )
    )
    return blocks


def _cost_display(costs: pd.DataFrame, unit: str) -> pd.DataFrame:
    largest = np.nanmax(costs["flops_mean"].to_numpy(float), initial=0.0)
    flops_unit, flops_scale = next(
        ((u, f) for u, f in (("PFLOP", 1e15), ("TFLOP", 1e12)) if largest >= f), ("GFLOP", 1e9)
    )
    return pd.DataFrame(
        {
            "Arm": [L.arm_title(x) for x in costs["arm"]],
            "Device": [d if isinstance(d, str) else F.NA for d in costs["device"]],
            "Phases": costs["runs"],
            "Time / phase (s)": [
                F.num(m, 3) + (f" ± {F.num(sd, 2)}" if np.isfinite(sd) else "")
                for m, sd in zip(costs["seconds_mean"], costs["seconds_sd"])
            ],
            f"{unit} / phase": [F.num(x, 3) for x in costs["device_hours_mean"]],
            f"{unit} (study)": [F.num(x, 3) for x in costs["device_hours_total"]],
            "Images / phase": [F.num(x, 4) for x in costs["images_seen_mean"]],
            f"{flops_unit}s / phase (est.)": [F.num(x / flops_scale, 3) for x in costs["flops_mean"]],
        }
    )


def _gain_display(
    cb: pd.DataFrame, metric: str, unit: str, alpha: float, with_fraction: bool
) -> pd.DataFrame:
    scale, pp = (100, " (pp)") if metric in A.FRACTION_METRICS else (1, "")
    level = round((1 - alpha) * 100)
    rows = []

    def diff(x: float) -> str:
        return F.diff(x * scale, metric)

    def rate(x: float, signed: bool = False) -> str:
        """Per-hour rates span orders of magnitude (CPU-seconds to GPU-days): whole numbers from 100 on."""
        if not np.isfinite(x):
            return F.NA
        v = x * scale
        text = f"{v:+,.0f}" if abs(v) >= 100 else f"{v:+.3g}"
        text = text if signed else text.removeprefix("+")
        return "\u2212" + text[1:] if text.startswith("-") else text

    def interval(low: float, high: float, fmt=diff) -> str:
        return f"[{fmt(low)}, {fmt(high)}]" if np.isfinite(low) else F.NA

    for r in cb.itertuples(index=False):
        rows.append(
            ({F.LABELS_COLUMN: F.percent(r.label_fraction)} if with_fraction else {})
            | {
                "Regime": r.regime_title,
                "Arm": L.arm_title(r.arm),
                "n": r.n,
                f"gain{pp}": F.diff(r.gain * scale, metric, signed=True),
                f"{level} % t-CI": interval(r.gain_ci_low, r.gain_ci_high),
                f"gain{pp} per {unit}": rate(r.gain_per_device_hour, signed=True),
                f"{level} % CI per {unit}": interval(
                    r.gain_per_device_hour_ci_low, r.gain_per_device_hour_ci_high, rate
                ),
            }
        )
    return pd.DataFrame(rows)


def excluded_blocks(a: RunAnalysis) -> list[Block]:
    df, excluded, pairing = a.df, a.excluded, a.pairing
    blocks: list[Block] = [Heading(2, "Excluded trials")]
    n_trials = df["trial_id"].nunique()
    ex = excluded.drop_duplicates("trial_id")
    counts = ex["status"].value_counts()
    blocks.append(
        Para(
            f"{len(ex)} of {n_trials} trials excluded ({int(counts.get('diverged', 0))} diverged, "
            f"{int(counts.get('error', 0))} errored). Their seeds are dropped pairwise from the comparisons "
            "they touch (a baseline trial touches every comparison of its regime"
            + (" at its label fraction)." if a.several_fractions else ").")
        )
    )
    if len(ex):
        s = R.exclusion_summary(excluded, by_fraction=a.several_fractions)
        s["arm"] = s["arm"].map(L.arm_title)
        if a.several_fractions:
            s[A.LABEL_FRACTION] = s[A.LABEL_FRACTION].map(F.percent)
        blocks.append(Table(s.rename(columns={"n_trials": "trials", A.LABEL_FRACTION: F.LABELS_COLUMN})))
    if pairing is not None and len(pairing.dropped):
        blocks.append(Box("note", "seeds dropped from the paired comparisons", SN.dropped_notes(pairing)))
    errors = (a.manifest or {}).get("errors") or []
    if errors:
        keys = ("trial_id", "arm", "seed", *(("label_fraction",) if a.several_fractions else ()), "error")
        rows = [{k: str(e.get(k, "")) for k in keys} for e in errors if isinstance(e, dict)]
        if rows:
            blocks.append(Table(pd.DataFrame(rows), "Errors recorded in manifest.json."))
    return blocks


def data_blocks(manifest: dict[str, Any] | None, why: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Data and leakage check")]
    check = (manifest or {}).get("data_check")
    if manifest is None:
        return blocks + [Para(f"{F.NA}: {why}.")]
    if not isinstance(check, dict):
        return blocks + [
            Para(f"{F.NA}: the manifest has no data_check (the runner did not check the data set).")
        ]
    if "ok" in check:
        blocks.append(Para(f"Data check passed: {'yes' if check.get('ok') else 'NO'}."))
    if check.get("summary"):
        blocks.append(Pre(str(check["summary"])))
    near = check.get("near_duplicates")
    if near is not None:
        blocks.append(Para(f"Near-duplicate train/test pairs (perceptual hash): {near}."))
    problems = [str(p) for p in check.get("problems") or []]
    warns = [str(w) for w in check.get("warnings") or []]
    if problems:
        blocks.append(Box("warning", "data problems", problems))
    if isinstance(near, (int, float)) and near > 0:
        leak = (
            f"{near} near-duplicate train/test pair(s): test metrics may be optimistic for every arm; remove "
            "them (or report results without them) before drawing conclusions."
        )
        blocks.append(Box("warning", "possible train/test leakage", [leak]))
    if warns:
        blocks.append(Box("note", "data warnings", warns))
    return blocks


def manifest_blocks(manifest: dict[str, Any] | None, why: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Run manifest")]
    if manifest is None:
        return blocks + [Para(f"{F.NA}: {why}.")]
    keys = ("preset", "git_revision", "data_fingerprint", "started", "finished", "n_trials")
    info = {k: (manifest.get(k) if manifest.get(k) is not None else F.NA) for k in keys if k in manifest}
    if info:
        blocks.append(Table(F.kv_table(info)))
    versions = manifest.get("versions")
    if isinstance(versions, dict) and versions:
        blocks.append(Heading(3, "Versions"))
        blocks.append(Table(F.kv_table(versions)))
    if "config" in manifest:
        text = json.dumps(manifest["config"], indent=2, sort_keys=True, default=str)
        blocks.append(Heading(3, "Config"))
        blocks.append(Pre(text, summary=f"The run's config (JSON, {len(text.splitlines())} lines)"))
    if len(blocks) == 1:
        blocks.append(Para(f"{F.NA}: manifest.json holds none of the expected keys."))
    return blocks
