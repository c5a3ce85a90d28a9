"""How the report writes numbers: values, differences, p-values, intervals and seed counts as text.

Metrics that are fractions (``analysis.FRACTION_METRICS``) are shown as % and their differences as
percentage points; a negative number takes a typographic minus; anything undefined is ``NA``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import FRACTION_METRICS, LABEL_FRACTION
from study.report.labels import fraction_title, regime_title
from study.report.simulate import SEEDS_MAX, mc_interval

NA = "n/a"
LABELS_COLUMN = "Labels"  # first column of a table with one row group per label fraction


def seeds(x: Any) -> str:
    """A seed count for power planning: an integer, or "> SEEDS_MAX" (inf: beyond the simulated range)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NA
    if v == math.inf:
        return f"> {SEEDS_MAX}"
    if not math.isfinite(v):
        return NA
    return f"{math.ceil(v)}"


def seed_range(lo: Any, hi: Any) -> str:
    """``"14\u201335"``, ``"9 to > 40"``, or one number when both ends agree."""
    a, b = seeds(lo), seeds(hi)
    if a == NA:
        return NA
    if a == b:
        return a
    return f"{a} to {b}" if b.startswith(">") else f"{a}\u2013{b}"


def num(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NA
    if math.isinf(v):
        return "\u221e" if v > 0 else "\u2212\u221e"
    if not math.isfinite(v):
        return NA
    text = f"{v:.{digits}g}"
    return "\u2212" + text[1:] if text.startswith("-") else text


def value(x: float, metric: str) -> str:
    """A metric value for tables: % with one decimal for fractions, raw otherwise."""
    if not np.isfinite(x):
        return NA
    if metric in FRACTION_METRICS:
        return f"{100 * x:.1f}"
    if metric in ("stop_epoch", "best_epoch"):
        return f"{x:.1f}"
    return f"{x:.3g}"


def mean_sd(mean: float, sd: float, metric: str) -> str:
    if not np.isfinite(mean):
        return NA
    return f"{value(mean, metric)} \u00b1 {value(sd, metric)}" if np.isfinite(sd) else value(mean, metric)


def diff(x: float, metric: str, signed: bool = False) -> str:
    """A difference for tables: two decimals of percentage points for fractions, 3 significant digits else."""
    if not np.isfinite(x):
        return NA
    text = f"{x:+.2f}" if signed else f"{x:.2f}"
    if metric not in FRACTION_METRICS:
        text = f"{x:+.3g}" if signed else f"{x:.3g}"
    return "\u2212" + text[1:] if text.startswith("-") else text


def p_value(p: float) -> str:
    if not np.isfinite(p):
        return NA
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def percent(label_fraction: float) -> str:
    """``0.05 -> "5 %"``."""
    return fraction_title(label_fraction).removesuffix(" labels")


def unit(metric: str) -> str:
    return "%" if metric in FRACTION_METRICS else ""


def spread(mean: float, sd: float) -> str:
    return f"{num(mean, 4)} \u00b1 {num(sd, 3)}" if np.isfinite(sd) else num(mean, 4)


def rate(x: float | None) -> str:
    return NA if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def sim_rate(x: float | None, n_sim: int) -> str:
    """A rate simulated from ``n_sim`` studies with its 95 % Monte-Carlo interval, to the digits the
    simulation supports: the last digit shown is no finer than the interval's half-width
    (``"3 % (Monte-Carlo 95 % interval 2.8\u20133.3 %)"`` from 20,000 studies; one decimal needs ~10^5)."""
    if x is None or not np.isfinite(x):
        return NA
    low, high = (100 * v for v in mc_interval(x, n_sim))
    if x in (0, 1):  # an interval from 0 (to 100): enough digits that its other end is not 0 (100)
        d = max(1, 1 - math.floor(math.log10(high - low)))
        ends = ["0" if x == 0 else f"{low:.{d}f}", "100" if x == 1 else f"{high:.{d}f}"]
        return f"{100 * x:.0f} % (Monte-Carlo 95 % interval {ends[0]}\u2013{ends[1]} %)"
    digits = max(0, math.floor(-math.log10((high - low) / 2)))
    ends = [f"{v:.{digits + 1}f}" for v in (low, high)]
    return f"{100 * x:.{digits}f} % (Monte-Carlo 95 % interval {ends[0]}\u2013{ends[1]} %)"


def summary_cells(summary: pd.DataFrame) -> list[tuple[float, str]]:
    return list(dict.fromkeys(zip(summary[LABEL_FRACTION], summary["regime"])))


def cell_columns(f: float, regime: str, with_fraction: bool) -> dict[str, str]:
    """The leading cells of a row of one (label fraction, regime): ``Regime``, after ``Labels`` when the
    study has several fractions."""
    return ({LABELS_COLUMN: percent(f)} if with_fraction else {}) | {"Regime": regime_title(regime)}


def kv_table(items: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"key": list(items), "value": [str(v) for v in items.values()]})


def format_diff(value: float, metric: str) -> str:
    """Signed difference for text: percentage points for fractions (``+1.4 pp``), raw units otherwise."""
    if not np.isfinite(value):
        return "n/a"
    if metric in FRACTION_METRICS:
        return f"{signed(value * 100, 1)} pp"
    return signed(value, 3, general=True)


def signed(x: float, digits: int, general: bool = False) -> str:
    s = f"{abs(x):.{digits}g}" if general else f"{abs(x):.{digits}f}"
    if float(s) == 0:
        return s
    return ("+" if x > 0 else "\u2212") + s


def bound(x: float, percent_points: bool) -> str:
    # Interval ends carry a sign only when negative (a typographic minus), as in "[−0.3, 3.1]".
    s = f"{x:.1f}" if percent_points else f"{x:.3g}"
    if not s.startswith("-"):
        return s
    return s[1:] if float(s) == 0 else "\u2212" + s[1:]


def format_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"
