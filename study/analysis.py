"""Paired statistics over a study's results table: pure functions, tables in and tables out.

The design follows ``docs/STATS.md`` (shared docs):

* Seed ``s`` gives every arm the same data split, validation split and fine-tune order, so each SSL arm is
  compared with the baseline through per-seed *paired differences* ``d_s = arm_s - baseline_s``, within each
  early-stopping regime (``none``, ``patience3``, ...) and each label fraction (``label_fraction``: the share
  of the training labels the fine-tune sees; for one seed every arm gets the same labelled subset, and a
  smaller fraction's subset lies inside a larger one's). The pairing key is (seed, label fraction); a table
  without the column (older runs) is one fraction, 1.0.
* Differences are cleaned of floating-point noise before any rank, tie, zero or spread check
  (``snap_ties``: values within ``TIE_RTOL`` of each other are one value), so 0.86 - 0.84 and
  0.815 - 0.795 are a tie, as they are in exact arithmetic.
* Headline test: the two-sided Wilcoxon signed-rank test on the paired differences, Holm-corrected
  (``p_holm``). Exact null distribution when there are no ties or zero differences (n <= 50); an exhaustive
  sign-flip permutation test when there are ties or zeros and n <= 13; the normal approximation otherwise.
  Zero differences are dropped (``zero_method="wilcox"``: a zero carries no sign), so the effective n of the
  test is the number of non-zero differences; a comparison whose differences are all zero has p = 1 and
  still counts in its Holm family.
* Holm family (``family``, default ``"study"``): every comparison in the table (m = SSL arms x regimes x
  label fractions), so the probability that a study with no true effect lists any significant comparison
  (the study-wise false-positive rate) is at most alpha. ``family="regime"`` corrects within each
  early-stopping regime of each label fraction only (m = SSL arms); its study-wise rate is ~12 % at n = 8
  with 3 regimes (``study.report.simulate``, STATISTICS.md), more with more fractions. Both adjusted p are reported (``p_holm_study``, ``p_holm_regime``). Holm is valid under
  any dependence. The study family needs more seeds (an exact test reaches 0.05/9 only from n = 9).
* Intervals, both (1 - alpha), neither adjusted for multiplicity: the Hodges-Lehmann location with its
  exact signed-rank CI (Walsh averages; the interval of the headline test: it excludes 0 exactly when the
  uncorrected exact Wilcoxon p <= alpha, without ties or zeros), and the t-interval of the mean difference.
  The BCa bootstrap of the mean covered ~90 % at n = 8 in the project's simulation and is not reported.
* Secondary: paired t-test, Hedges' g_z, matched-pairs rank-biserial correlation, probability of
  improvement, all signed so that positive = arm better (also for lower-is-better metrics). Power of the
  headline procedure itself (Holm-corrected Wilcoxon at the family size) is simulated in
  ``study.report.simulate``, not here.
* Across arms: Friedman test with Nemenyi critical difference (``friedman``); descriptive only, since the
  Nemenyi test depends on which arms are in the pool (Benavoli et al. 2016).

Tables: the tidy results table has one row per trial x regime (see ``docs/ARCHITECTURE.md``; a trial is one
arm x seed x label fraction). Matrices are ``(n_seeds, n_arms)`` for one (label fraction, regime) cell: rows
are seeds (blocks), columns are arms, baseline first. Metrics are fractions in
[0, 1] (the report renders % and percentage points).

Errors: every bad input raises a subclass of ``ValueError`` (``ResultsTableError``, ``PairingError``) whose
message names the arm / seed / column at fault and the fix.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from study.report import cost as _cost
from study.tasks import registry as _pretext
from study.tasks import references as _references

BASELINE = "baseline"
BASELINE_TITLE = "No self-supervision"
STATUSES = ("ok", "diverged", "error")

CLASSIFICATION_METRICS = (
    "test_soft_accuracy",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_auc",
    "test_sensitivity",
    "test_specificity",
    "test_f1",
)
SUMMARY_METRICS = CLASSIFICATION_METRICS + ("stop_epoch",)
# Fractions in [0, 1]: rendered as % and differences as percentage points.
FRACTION_METRICS = frozenset(CLASSIFICATION_METRICS)
LOWER_IS_BETTER = frozenset({"test_loss", "val_loss"})
METRIC_LABELS = {
    "test_soft_accuracy": "soft accuracy",
    "test_accuracy": "accuracy",
    "test_balanced_accuracy": "balanced accuracy",
    "test_auc": "AUC",
    "test_sensitivity": "sensitivity",
    "test_specificity": "specificity",
    "test_f1": "F1",
    "test_loss": "test loss",
    "val_loss": "validation loss",
    "stop_epoch": "stop epoch",
    "best_epoch": "best epoch",
}


# What the analysis reads; a table without these cannot be analysed.
REQUIRED_COLUMNS = (
    "trial_id",
    "arm",
    "task",
    "seed",
    "regime",
    "patience",
    "stop_epoch",
    "status",
    *CLASSIFICATION_METRICS,
    "test_loss",
)
# The rest of the contract: added as missing values when absent, so downstream code can rely on them.
OPTIONAL_STR_COLUMNS = ("error", "encoder", "data_fingerprint", "pretext_device")


def optional_int_columns() -> tuple[str, ...]:
    """Whole-number contract columns (added as missing when absent): epochs, the int task parameters of the
    registered tasks (`study.tasks.registry.param_names`), the image size."""
    return ("best_epoch", "diverged_epoch", *_task_params_of(int), "image_size")


def optional_float_columns() -> tuple[str, ...]:
    """Float contract columns (added as missing when absent): learning rates, validation loss, the float task
    parameters, the pretext metrics (`pretext_<metric>`) of the registered tasks and the pretext phase's
    cost (`study.report.cost.COST_COLUMNS`)."""
    metrics = dict.fromkeys(f"pretext_{m}" for task in _pretext.TASKS.values() for m in task.metrics)
    return ("lr", "pretext_lr", "val_loss", *_task_params_of(float), *metrics, *_cost.COST_COLUMNS)


def _task_params_of(kind: type) -> tuple[str, ...]:
    return tuple(n for n in _pretext.param_names() if _pretext.param_spec(n).type is kind)


HISTORY_REQUIRED_COLUMNS = ("trial_id", "arm", "seed", "phase", "epoch")
# Share of the training labels a trial's fine-tune saw: a design column, 1.0 when the table has none (older
# runs, and studies of one fraction written before the runner recorded it).
LABEL_FRACTION = "label_fraction"
DEFAULT_LABEL_FRACTION = 1.0

ZERO_METHOD = "wilcox"
EXACT_MAX_N = 50  # scipy's own limit for the exact signed-rank distribution
PERMUTATION_MAX_N = 13  # 2**13 = 8192 sign flips: an exhaustive, hence exact, permutation test


class AnalysisError(ValueError):
    """Input the analysis cannot use; the message names what is wrong and how to fix it."""


class ResultsTableError(AnalysisError):
    """results.csv / history.csv does not follow the contract in docs/ARCHITECTURE.md."""


class PairingError(AnalysisError):
    """Arms were not run on the same seeds, so a paired comparison is impossible."""


# --------------------------------------------------------------------------------------------- names, order


def _arm_stem(arm: str) -> str:
    return arm.split("(", 1)[0].strip()


def base_task(arm: str) -> str:
    """`"corruption(swap_count=50)" -> "corruption"`; `"baseline"` (or `"baseline(lr=0.01)"`) -> `"none"`."""
    stem = _arm_stem(arm)
    return "none" if stem == BASELINE else stem


def task_title(task: str) -> str:
    """`"corruption" -> "Corruption removal"` (the registry's title); a task not registered here by its name."""
    if task == "none":
        return BASELINE_TITLE
    registered = _pretext.TASKS.get(task)
    return registered.title if registered else task.replace("_", " ").capitalize()


def task_rank(task: str) -> tuple[int, str]:
    """Sort key of a task: the baseline first, then the registry's order, then tasks not registered here."""
    order = ["none", *_pretext.TASKS]
    return (order.index(task) if task in order else len(order), task)


def arm_title(arm: str) -> str:
    """Display title: `"corruption" -> "Corruption removal"`, variants keep their parameters."""
    stem = _arm_stem(arm)
    title = task_title(base_task(arm))
    rest = arm[len(stem) :].strip()
    return f"{title} {rest}" if rest else title


def regime_title(regime: str) -> str:
    """`"none" -> "no early stopping"`, `"patience10" -> "patience 10"` (other suffixes kept)."""
    if regime == "none":
        return "no early stopping"
    m = re.fullmatch(r"patience(\d+)(.*)", regime)
    if m:
        rest = m.group(2).strip("_ ")
        return f"patience {m.group(1)}" + (f" ({rest.replace('_', ' ')})" if rest else "")
    return regime


def fraction_title(label_fraction: float) -> str:
    """`0.05 -> "5 % labels"`, `1.0 -> "100 % labels"` (share of the training labels the fine-tune saw)."""
    return f"{100 * float(label_fraction):.3g} % labels"


def cell_title(label_fraction: float, regime_title_text: str, with_fraction: bool) -> str:
    """Where a comparison lives: ``"patience 3"``, or ``"5 % labels, patience 3"`` when the study has several
    label fractions (``with_fraction``); ``regime_title_text`` is already a title (``regime_title``)."""
    return f"{fraction_title(label_fraction)}, {regime_title_text}" if with_fraction else regime_title_text


def label_fractions(df: pd.DataFrame) -> list[float]:
    """The table's label fractions, ascending; ``[1.0]`` when it has no ``label_fraction`` column."""
    if LABEL_FRACTION not in df.columns:
        return [DEFAULT_LABEL_FRACTION]
    return sorted(float(f) for f in pd.unique(df[LABEL_FRACTION].dropna()))


def with_label_fraction(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a float ``label_fraction`` column (1.0 where the table has none). Returns ``df`` itself when
    the column is there: frames that did not come through ``tidy_results`` (simulations, hand-built tests)
    analyse as one fraction."""
    if LABEL_FRACTION in df.columns:
        return df
    return df.assign(**{LABEL_FRACTION: DEFAULT_LABEL_FRACTION})


def cells(df: pd.DataFrame) -> list[tuple[float, str]]:
    """The (label fraction, regime) cells present in ``df``: fractions ascending, then ``regime_order``."""
    df = with_label_fraction(df)
    present = set(zip(df[LABEL_FRACTION].astype(float), df["regime"]))
    return [
        (f, r) for f in label_fractions(df) for r in regime_order(df["regime"].dropna()) if (f, r) in present
    ]


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.removeprefix("test_").replace("_", " "))


def arm_order(arms: Iterable[str]) -> list[str]:
    """Baseline first, then tasks in the registry's order (the paper's), variants of a task after it (by name)."""
    return sorted(set(arms), key=lambda arm: (task_rank(base_task(arm))[0], arm))


def regime_order(regimes: Iterable[str]) -> list[str]:
    """`none` first, then by patience (the paper's row order), then by name."""

    def key(regime: str) -> tuple[int, str]:
        if regime == "none":
            return (-1, regime)
        m = re.match(r"patience(\d+)", regime)
        return (int(m.group(1)) if m else 10**9, regime)

    return sorted(set(regimes), key=key)


def metric_column(metric: str, columns: Iterable[str] | None = None) -> str:
    """Accept `"auc"` or `"test_auc"`; return the results-table column name."""
    cols = set(columns) if columns is not None else set(REQUIRED_COLUMNS) | set(optional_float_columns())
    cols |= set(SUMMARY_METRICS)
    for name in (metric, f"test_{metric}"):
        if name in cols:
            return name
    raise AnalysisError(
        f"unknown metric {metric!r}; use one of {sorted(c for c in cols if c.startswith('test_'))} "
        "(the 'test_' prefix is optional) or 'stop_epoch'"
    )


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def arm_better(hl_estimate: Any, mean_diff: Any, metric: str) -> Any:
    """Whether the arm beats the baseline, by the sign of the Hodges-Lehmann estimate (the estimate that goes
    with the signed-rank test, which decides significance; the mean difference only where it is undefined).
    Scalars or aligned arrays/Series in, bool(s) out."""
    hl, mean = np.asarray(hl_estimate, dtype=float), np.asarray(mean_diff, dtype=float)
    diff = np.where(np.isfinite(hl), hl, mean)
    return (diff > 0) if higher_is_better(metric) else (diff < 0)


# ------------------------------------------------------------------------------------------ loading, tidying


def _clean_str(s: pd.Series) -> pd.Series:
    # astype(str) would turn missing values into the text "nan" on pandas 2; keep them missing.
    out = s.astype(object).where(s.notna(), None)
    out = out.map(lambda v: v if v is None else str(v).strip())
    return out.where(out.notna() & (out != ""), np.nan)


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    try:
        return pd.to_numeric(df[col])
    except (ValueError, TypeError) as e:
        bad = [v for v in df[col].dropna().unique() if _not_number(v)][:3]
        raise ResultsTableError(
            f"column {col!r} must be numeric; found {bad} (e.g. trial "
            f"{df.loc[df[col].isin(bad), 'trial_id'].iloc[0] if bad else '?'}); the runner must write numbers"
        ) from e


def _not_number(v: Any) -> bool:
    try:
        float(v)
        return False
    except (TypeError, ValueError):
        return True


def _integer(df: pd.DataFrame, col: str) -> pd.Series:
    x = _numeric(df, col).astype(float)
    frac = x.notna() & np.isfinite(x) & (x != np.round(x))
    if frac.any():
        ids = df.loc[frac, "trial_id"].tolist()[:3]
        raise ResultsTableError(
            f"column {col!r} must hold whole numbers; trial(s) {ids} have {x[frac].tolist()[:3]}"
        )
    return x.round().astype("Int64")


def _boolean(s: pd.Series) -> pd.Series:
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}

    def conv(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return pd.NA
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        return mapping.get(str(v).strip().lower(), pd.NA)

    return s.map(conv).astype("boolean")


def tidy_results(raw: pd.DataFrame) -> pd.DataFrame:
    """Validate a raw results table and fix its dtypes. Pure: returns a new frame.

    Input: one row per trial x regime (docs/ARCHITECTURE.md). Output: same rows, sorted by label fraction,
    regime, arm (baseline first) and seed; ``seed`` int; ``label_fraction`` float in (0, 1] (1.0 for every row
    when the table has no such column: runs before label fractions were a study dimension); epochs and sizes
    nullable ``Int64``; metrics float; ``status`` one of ok|diverged|error; ``pretext_cached`` nullable
    boolean; optional contract columns added as missing.

    A trial that failed before its regimes were replayed may have an empty ``regime``; such a row (status
    diverged/error only) is repeated once per regime in the table, so pairing can tell "this seed was run
    and excluded" from "this seed was never run".
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise ResultsTableError(
            f"results table lacks required column(s) {missing}; it must follow the results.csv contract in "
            "docs/ARCHITECTURE.md (re-run `study run` with the current runner, or add the columns)"
        )
    if len(raw) == 0:
        raise ResultsTableError("results table has no rows: no trial has finished yet; run the study first")
    df = raw.copy()
    for col in OPTIONAL_STR_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    int_columns, float_columns = optional_int_columns(), optional_float_columns()
    for col in (*int_columns, *float_columns):
        if col not in df.columns:
            df[col] = np.nan
    if "pretext_cached" not in df.columns:
        df["pretext_cached"] = np.nan

    for col in ("trial_id", "arm", "task", "regime", "status", *OPTIONAL_STR_COLUMNS):
        df[col] = _clean_str(df[col])
    for col in ("trial_id", "arm", "task", "status"):
        if df[col].isna().any():
            rows = df.index[df[col].isna()].tolist()[:5]
            raise ResultsTableError(f"column {col!r} is empty in row(s) {rows}; every row needs a {col}")
    df["status"] = df["status"].str.lower()
    bad_status = sorted(set(df["status"]) - set(STATUSES))
    if bad_status:
        ids = df.loc[df["status"].isin(bad_status), "trial_id"].tolist()[:5]
        raise ResultsTableError(f"status must be one of {STATUSES}; found {bad_status} in trial(s) {ids}")

    seed = _numeric(df, "seed").astype(float)
    bad_seed = seed.isna() | ~np.isfinite(seed) | (seed != np.round(seed))
    if bad_seed.any():
        ids = df.loc[bad_seed, "trial_id"].tolist()[:5]
        raise ResultsTableError(
            f"seed must be a whole number in every row; trial(s) {ids} have {seed[bad_seed].tolist()[:5]}"
        )
    df["seed"] = seed.round().astype(np.int64)
    df[LABEL_FRACTION] = _label_fraction(df)

    for col in ("patience", "stop_epoch", *int_columns):
        df[col] = _integer(df, col)
    for col in sorted(set(CLASSIFICATION_METRICS) | {"test_loss"} | set(float_columns)):
        df[col] = _numeric(df, col).astype(float)
    # Other pretext_* columns the runner adds (e.g. pretext_key, a cache hash) are typed only when numeric.
    for col in [c for c in df.columns if c.startswith("pretext_") and c not in float_columns]:
        if col != "pretext_cached":
            converted = pd.to_numeric(df[col], errors="coerce")
            if converted.notna().sum() == df[col].notna().sum():
                df[col] = converted.astype(float)
    df["pretext_cached"] = _boolean(df["pretext_cached"])

    is_base_arm = df["arm"].map(base_task) == "none"
    is_none_task = df["task"] == "none"
    if (is_base_arm != is_none_task).any():
        rows = df.loc[is_base_arm != is_none_task, ["trial_id", "arm", "task"]].head(3).to_dict("records")
        raise ResultsTableError(
            f"the baseline arm ('baseline', or 'baseline(...)' when its settings vary) must be exactly the "
            f"trials with task 'none'; mismatched rows: {rows}"
        )

    ok = df["status"] == "ok"
    if (ok & df["regime"].isna()).any():
        ids = df.loc[ok & df["regime"].isna(), "trial_id"].tolist()[:5]
        raise ResultsTableError(f"status-ok row(s) of trial(s) {ids} have no regime; every ok row needs one")
    for col in CLASSIFICATION_METRICS:
        x = df[col]
        out_of_range = ok & x.notna() & ((x < 0) | (x > 1))
        if out_of_range.any():
            r = df.loc[out_of_range].iloc[0]
            raise ResultsTableError(
                f"{col} = {r[col]} for arm {r['arm']!r}, seed {r['seed']} (trial {r['trial_id']}): classification "
                "metrics must be fractions in [0, 1], not percentages; fix the runner's output"
            )
    df = _expand_unreplayed(df)

    order_r = {r: i for i, r in enumerate(regime_order(df["regime"]))}
    order_a = {a: i for i, a in enumerate(arm_order(df["arm"]))}
    df = df.assign(_r=df["regime"].map(order_r), _a=df["arm"].map(order_a))
    df = df.sort_values([LABEL_FRACTION, "_r", "_a", "seed", "trial_id"], kind="stable")
    return df.drop(columns=["_r", "_a"]).reset_index(drop=True)


def _label_fraction(df: pd.DataFrame) -> pd.Series:
    """``label_fraction`` as float in (0, 1]: 1.0 without the column; ``ResultsTableError`` for a missing,
    non-numeric or out-of-range value (it is a pairing key, like the seed)."""
    if LABEL_FRACTION not in df.columns:
        return pd.Series(DEFAULT_LABEL_FRACTION, index=df.index, dtype=float)
    x = pd.to_numeric(df[LABEL_FRACTION], errors="coerce").astype(float)
    bad = x.isna() | ~((x > 0) & (x <= 1))
    if bad.any():
        ids = df.loc[bad, "trial_id"].tolist()[:5]
        raise ResultsTableError(
            f"label_fraction must be a number in (0, 1] in every row (the share of training labels the "
            f"fine-tune saw); trial(s) {ids} have {df.loc[bad, LABEL_FRACTION].tolist()[:5]}"
        )
    # 12 decimals: one fraction written as 0.2 and 0.20000000000000001 is one cell.
    return x.round(12)


def _expand_unreplayed(df: pd.DataFrame) -> pd.DataFrame:
    no_regime = df["regime"].isna()
    if not no_regime.any():
        return df
    regimes = regime_order(df.loc[~no_regime, "regime"])
    if not regimes:
        raise ResultsTableError(
            "no row has a regime: no trial reached the fine-tune replay; there is nothing to analyse yet"
        )
    patience = df.loc[~no_regime].groupby("regime")["patience"].first()
    copies = []
    for regime in regimes:
        c = df.loc[no_regime].copy()
        c["regime"] = regime
        c["patience"] = patience[regime]
        copies.append(c)
    out = pd.concat([df.loc[~no_regime], *copies], ignore_index=True)
    out["patience"] = out["patience"].astype("Int64")
    return out


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """Read ``run_dir/results.csv`` (or a path to a results CSV) into the tidy table (``tidy_results``)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise ResultsTableError(
            f"no results table at {path}; run the study first (`study run ...`) or pass its run dir"
        )
    # Read everything as text first: "none" is a regime/task name, not a missing value, and typing is ours.
    return tidy_results(_read_table(path))


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV of the run as text columns; an empty or unparsable file is a `ResultsTableError` naming it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ResultsTableError(
            f"{path} is empty; rebuild it from Ray's records: delete it and run `study report` on the run"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ResultsTableError(f"{path} is not a readable CSV ({str(exc).splitlines()[0]})") from None


def load_history(path: str | Path) -> pd.DataFrame:
    """Read ``history.csv`` (or a run dir containing it): one row per trial x phase x epoch (1-based).

    Metric columns (``loss``, ``val_*``, ``test_*``) must be numeric (float; ``ResultsTableError`` naming
    the column otherwise). Other columns are provenance (``pid``, ``node_id``: Ray's hex node id, ...): typed
    float when every value is a number, else kept as text, so they never stop the curves from loading.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "history.csv"
    if not p.is_file():
        raise ResultsTableError(f"no history table at {p}")
    raw = _read_table(p)
    missing = [c for c in HISTORY_REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise ResultsTableError(f"history.csv lacks required column(s) {missing}; see docs/ARCHITECTURE.md")
    h = raw.copy()
    for col in ("trial_id", "arm", "phase"):
        h[col] = _clean_str(h[col])
    h["seed"] = _integer(h, "seed")
    h["epoch"] = _integer(h, "epoch")
    for col in h.columns:
        if col in ("trial_id", "arm", "phase", "seed", "epoch"):
            continue
        if col == "loss" or col.startswith(("val_", "test_")):
            h[col] = _numeric(h, col).astype(float)
            continue
        # A hex id such as "12e4" would parse as a number: ids stay text whatever they look like.
        converted = pd.to_numeric(h[col], errors="coerce")
        numeric = (
            col not in ("node_id", "data_fingerprint") and converted.notna().sum() == h[col].notna().sum()
        )
        h[col] = converted.astype(float) if numeric else _clean_str(h[col])
    return h


# -------------------------------------------------------------------------------------- exclusions, pairing


def split_valid(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the tidy table into rows usable for analysis (status ok) and excluded rows.

    Returns ``(valid, excluded)``; ``excluded`` has an added ``reason`` column (``"diverged at epoch 12"``,
    ``"error: <message>"``). Counts per arm: ``exclusion_summary(excluded)``.
    """
    ok = df["status"] == "ok"
    excluded = df.loc[~ok].copy()
    excluded["reason"] = [_exclusion_reason(r) for r in excluded.itertuples(index=False)]
    return df.loc[ok].copy(), excluded


def _exclusion_reason(row: Any) -> str:
    if row.status == "diverged":
        ep = row.diverged_epoch
        return f"diverged at epoch {int(ep)}" if pd.notna(ep) else "diverged (non-finite loss)"
    msg = row.error if isinstance(row.error, str) and row.error else "no message recorded"
    first = msg.strip().splitlines()[-1] if msg.strip() else msg  # a traceback's last line names the error
    return f"error: {first[:200]}"


def exclusion_summary(excluded: pd.DataFrame, by_fraction: bool = False) -> pd.DataFrame:
    """Counts of excluded *trials* (not rows: a trial has one row per regime) per arm x status, and per label
    fraction when ``by_fraction`` (a study of several fractions).

    Columns: ``arm, status, n_trials, seeds, reasons`` (seeds and distinct reasons joined as text), with
    ``label_fraction`` first when ``by_fraction``.
    """
    keys = [LABEL_FRACTION, "arm", "status"] if by_fraction else ["arm", "status"]
    cols = [*keys, "n_trials", "seeds", "reasons"]
    if excluded.empty:
        return pd.DataFrame(columns=cols)
    excluded = with_label_fraction(excluded)
    rows = []
    for key, g in excluded.groupby(keys, sort=False):
        trials = g.drop_duplicates("trial_id")
        rows.append(
            dict(zip(keys, key))
            | {
                "n_trials": len(trials),
                "seeds": ", ".join(str(s) for s in sorted(trials["seed"].unique())),
                "reasons": "; ".join(dict.fromkeys(g["reason"] if "reason" in g else g["status"])),
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    order = {a: i for i, a in enumerate(arm_order(out["arm"]))}
    out = out.sort_values("arm", key=lambda s: s.map(order), kind="stable")
    if by_fraction:
        out = out.sort_values(LABEL_FRACTION, kind="stable")
    return out.reset_index(drop=True)


Cell = tuple[float, str]  # (label fraction, regime): where one set of paired comparisons lives


@dataclass(frozen=True)
class Pairing:
    """Outcome of ``check_pairing``: which seeds every arm ran, and which cells cannot be used.

    ``cells``: the (label fraction, regime) pairs of the table, fractions ascending, then regimes in
    ``regime_order``; ``seeds[(label_fraction, regime)]``: seeds run for every arm in that cell (the table
    is paired on them: the pairing key is (seed, label fraction)). ``dropped``: one row per unusable value
    (``label_fraction, regime, arm, seed, trial_id, status, reason``): the trial was excluded
    (diverged/error) or its metric is missing. Comparisons with the baseline drop such a seed pairwise (only
    from the comparisons it touches; a baseline value touches all of its cell's); Friedman drops it listwise
    (a block needs every arm).
    """

    metric: str
    baseline: str
    regimes: tuple[str, ...]
    arms: tuple[str, ...]  # baseline first
    seeds: dict[Cell, tuple[int, ...]]
    dropped: pd.DataFrame
    fractions: tuple[float, ...] = (DEFAULT_LABEL_FRACTION,)
    cells: tuple[Cell, ...] = ()

    @property
    def several_fractions(self) -> bool:
        return len(self.fractions) > 1

    def dropped_for(self, regime: str, arm: str, label_fraction: float | None = None) -> pd.DataFrame:
        """Cells removed from the ``arm`` vs baseline comparison in ``regime`` (of ``label_fraction``; default
        the table's only fraction)."""
        d = self.dropped
        f = self._fraction(label_fraction)
        return d[(d["regime"] == regime) & (d[LABEL_FRACTION] == f) & d["arm"].isin([arm, self.baseline])]

    def _fraction(self, label_fraction: float | None) -> float:
        if label_fraction is not None:
            return float(label_fraction)
        if self.several_fractions:
            raise AnalysisError(
                f"the table has label fractions {list(self.fractions)}: pass label_fraction= to choose one"
            )
        return self.fractions[0]

    def notes(self) -> list[str]:
        """One plain sentence per dropped value, for the report."""
        out = []
        for r in self.dropped.itertuples(index=False):
            scope = (
                "every comparison"
                if r.arm == self.baseline
                else f"the {arm_title(r.arm)} vs baseline comparison"
            )
            where = cell_title(r.label_fraction, regime_title(r.regime), self.several_fractions)
            out.append(
                f"{where}: seed {r.seed} dropped from {scope} ({arm_title(r.arm)}, trial {r.trial_id}: {r.reason})"
            )
        return out


def baseline_arm(df: pd.DataFrame) -> str:
    """The one arm with task ``none`` (named ``baseline``; ``baseline(lr=...)`` when its settings vary).

    ``PairingError`` when there is none, or several (one per setting: compare within one setting).
    """
    arms = arm_order(df.loc[df["task"] == "none", "arm"])
    if len(arms) == 1:
        return arms[0]
    if not arms:
        raise PairingError(
            f"no baseline arm (task 'none') in the table (arms: {arm_order(df['arm'])}); every comparison is "
            "against the baseline: add task 'none' to the study"
        )
    raise PairingError(
        f"several baseline arms {arms}: the study varied the baseline's settings, so which one pairs with "
        "each arm is ambiguous; analyse one setting at a time (filter the table by the varied column, e.g. lr)"
    )


def check_pairing(df: pd.DataFrame, metric: str = "test_auc") -> Pairing:
    """Check that, within each (label fraction, regime) cell, every arm ran exactly the baseline's seeds.

    Pass the *full* tidy table (``load_run``), excluded trials included: that is how a seed that was run
    but diverged/errored (dropped pairwise, listed in ``Pairing.dropped``) is told apart from a seed never
    run for an arm (the table is not paired: ``PairingError`` naming the arm, regime, fraction and seeds).
    Two trials for the same arm x seed x regime x label fraction are also a ``PairingError`` (which one would
    be the pair?). A table without ``label_fraction`` is one fraction, 1.0.
    """
    metric = metric_column(metric, df.columns)
    df = with_label_fraction(df)
    baseline = baseline_arm(df)
    arms = [baseline] + [a for a in arm_order(df["arm"]) if a != baseline]
    fractions = tuple(label_fractions(df))
    several = len(fractions) > 1

    def where(regime: str, f: float) -> str:
        return f"regime {regime!r}" + (f", label fraction {f:g}" if several else "")

    problems: list[str] = []
    keys = [LABEL_FRACTION, "regime", "arm", "seed"]
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        for (f, regime, arm, seed), g in df.loc[dup].groupby(keys, sort=False):
            problems.append(
                f"arm {arm!r} has {len(g)} trials for seed {seed} in {where(regime, f)} "
                f"({', '.join(map(str, g['trial_id']))})"
            )
        raise PairingError(
            "; ".join(problems[:10])
            + ". A paired comparison needs one trial per arm x seed: split the table "
            "(e.g. one analysis per learning rate) or remove the duplicate trials"
        )
    seeds: dict[Cell, tuple[int, ...]] = {}
    dropped = []
    table_cells = cells(df)
    groups = {(float(f), str(r)): g for (f, r), g in df.groupby([LABEL_FRACTION, "regime"], sort=False)}
    for cell in table_cells:
        f, regime = cell
        sub = groups[cell]
        base = set(sub.loc[sub["arm"] == baseline, "seed"])
        if not base:
            problems.append(f"{where(regime, f)} has no baseline trials")
            continue
        for arm in arms[1:]:
            have = set(sub.loc[sub["arm"] == arm, "seed"])
            if base - have:
                problems.append(
                    f"arm {arm!r} ({where(regime, f)}) has no trial for seed(s) {_seed_list(base - have)} "
                    "that the baseline has"
                )
            if have - base:
                problems.append(
                    f"the baseline ({where(regime, f)}) has no trial for seed(s) {_seed_list(have - base)} "
                    f"that arm {arm!r} has"
                )
        seeds[cell] = tuple(sorted(base))
        unusable = sub[(sub["status"] != "ok") | sub[metric].isna()]
        for r in unusable.itertuples(index=False):
            reason = _exclusion_reason(r) if r.status != "ok" else f"{metric} is missing"
            dropped.append(
                {
                    LABEL_FRACTION: cell[0],
                    "regime": regime,
                    "arm": r.arm,
                    "seed": int(r.seed),
                    "trial_id": r.trial_id,
                    "status": r.status,
                    "reason": reason,
                }
            )
    if problems:
        raise PairingError(
            "the table is not paired by seed: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Run the missing trials (every arm needs the same seeds; `study run` resumes a study) or drop "
            "those seeds from every arm. If they were excluded (diverged/error), pass the full table from "
            "load_run, not only the valid rows."
        )
    dropped_df = pd.DataFrame(
        dropped, columns=[LABEL_FRACTION, "regime", "arm", "seed", "trial_id", "status", "reason"]
    )
    return Pairing(
        metric=metric,
        baseline=baseline,
        regimes=tuple(regime_order(df["regime"].dropna())),
        arms=tuple(arms),
        seeds=seeds,
        dropped=dropped_df,
        fractions=fractions,
        cells=tuple(seeds),
    )


def _seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in sorted(seeds))


def paired_matrix(
    df: pd.DataFrame,
    metric: str,
    regime: str,
    arms: Sequence[str] | None = None,
    *,
    label_fraction: float | None = None,
    pairing: Pairing | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Metric values as a ``(n_seeds, n_arms)`` matrix for one regime of one label fraction, after
    ``check_pairing``.

    ``label_fraction``: which fraction (required when the table has several; default its only one).
    ``pairing``: ``check_pairing(df, metric)`` when the caller already has it (checked once per table, not
    once per cell). Rows: the seeds every arm ran (ascending); columns: ``arms`` (default: all arms,
    baseline first). Cells of excluded trials (status != ok) and missing metric values are NaN: callers drop
    them pairwise (vs baseline) or listwise (Friedman). Returns ``(matrix, seeds (n_seeds,), arms)``.
    """
    pairing = check_pairing(df, metric) if pairing is None else pairing
    cell = (pairing._fraction(label_fraction), regime)
    if cell not in pairing.seeds:
        where = f"regime {regime!r}" + (
            f" at label fraction {cell[0]:g}" if pairing.several_fractions else ""
        )
        raise AnalysisError(
            f"{where} not in the table; regimes: {list(pairing.regimes)}"
            + (f", label fractions: {list(pairing.fractions)}" if pairing.several_fractions else "")
        )
    arms = list(pairing.arms) if arms is None else list(arms)
    unknown = [a for a in arms if a not in pairing.arms]
    if unknown:
        raise AnalysisError(f"arm(s) {unknown} not in the table; arms: {list(pairing.arms)}")
    matrix, seeds, all_arms = _paired_matrix(df, pairing, cell)
    return matrix[:, [all_arms.index(a) for a in arms]], seeds, arms


# -------------------------------------------------------------------------------------- descriptive tables


SUMMARY_COLUMNS = [
    LABEL_FRACTION,
    "regime",
    "arm",
    "arm_title",
    "metric",
    "n",
    "mean",
    "sd",
    "median",
    "q1",
    "q3",
]


def summarise(df: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Per label fraction x regime x arm x metric: ``n, mean, sd, median, q1, q3`` over seeds, status-ok rows.

    Long format, columns ``SUMMARY_COLUMNS`` (``label_fraction, regime, arm, arm_title, metric, n, mean, sd,
    median, q1, q3``); rows ordered by label fraction, regime, arm (baseline first), then ``metrics`` order.
    SD uses ddof=1 (NaN when n < 2). Descriptive: all valid seeds of an arm count, also those whose pair was
    dropped from a comparison.
    """
    cols = [metric_column(m, df.columns) for m in metrics]
    df = with_label_fraction(df)
    valid = df[df["status"] == "ok"]
    groups = {(float(f), r, a): g for (f, r, a), g in valid.groupby([LABEL_FRACTION, "regime", "arm"])}
    rows = []
    for f, regime in cells(df):
        for arm in arm_order(df["arm"]):
            g = groups.get((f, regime, arm), valid.iloc[0:0])
            for col in cols:
                x = g[col].to_numpy(dtype=float, na_value=np.nan)
                x = x[np.isfinite(x)]
                n = x.size
                rows.append(
                    {
                        LABEL_FRACTION: f,
                        "regime": regime,
                        "arm": arm,
                        "arm_title": arm_title(arm),
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


def label_efficiency(summary: pd.DataFrame, metric: str, confidence: float = 0.95) -> pd.DataFrame:
    """Each arm's mean ``metric`` per label fraction and regime with the t-interval of the mean over seeds.

    ``summary``: ``summarise`` output. Columns ``label_fraction, regime, regime_title, arm, arm_title, n,
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


# ------------------------------------------------------------------------- statistics on paired differences


# Two differences closer than this (in the metric's units, scaled by the operands' magnitude) are the same
# value: 0.86 - 0.84 and 0.815 - 0.795 differ by 1.1e-16 in floating point but are one tie. Any metric a
# study records has a resolution far coarser (AUC on n_pos x n_neg test images: 1/(n_pos n_neg)).
TIE_RTOL = 1e-9


def tie_tolerance(*values: np.ndarray) -> float:
    """Tie/zero tolerance for differences of ``values`` (arrays of any shape): ``TIE_RTOL * max(1, max|x|)``
    (floating-point error of ``a - b`` grows with ``|a|, |b|``, not with the difference)."""
    finite = [np.abs(v[np.isfinite(v)]).max() for v in map(np.asarray, values) if np.isfinite(v).any()]
    return TIE_RTOL * max([1.0, *finite])


def snap_ties(d: np.ndarray, tol: float | None = None) -> np.ndarray:
    """``d`` ``(..., n)`` with floating-point noise removed along the last axis: ``|d| <= tol`` becomes 0 and
    absolute values within ``tol`` of each other (chained) take their group's smallest value, sign kept.

    Ranks, ties, zero and zero-SD checks on the result are those of the exact differences. NaN stays NaN.
    ``tol`` defaults to ``tie_tolerance(d)``.
    """
    d = np.asarray(d, dtype=float)
    if d.size == 0:
        return d.copy()
    tol = tie_tolerance(d) if tol is None else float(tol)
    x = np.atleast_2d(d).reshape(-1, d.shape[-1])
    a = np.abs(x)
    a = np.where(a <= tol, 0.0, a)
    order = np.argsort(a, axis=1)  # NaN last
    s = np.take_along_axis(a, order, axis=1)
    with np.errstate(invalid="ignore"):
        new = np.concatenate([np.ones((len(s), 1), bool), ~(np.diff(s, axis=1) <= tol)], axis=1)
    start = np.maximum.accumulate(np.where(new, np.arange(s.shape[1]), 0), axis=1)
    out = np.empty_like(a)
    np.put_along_axis(out, order, np.take_along_axis(s, start, axis=1), axis=1)
    return (np.sign(x) * out + 0.0).reshape(d.shape)  # + 0.0: no -0.0


def _finite(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, dtype=float)
    return d[np.isfinite(d)]


def hedges_gz(d: np.ndarray, higher_better: bool = True) -> float:
    """Paired standardised mean difference of ``d`` (n,): ``mean/SD * J``, ``J = 1 - 3/(4(n-1)-1)``.

    Sign convention (as ``rank_biserial`` and ``prob_improvement``): positive = the arm is better, so for
    a lower-is-better metric (``higher_better=False``) the sign of the mean is flipped. Differences are
    first snapped (``snap_ties``): NaN for n < 3 (J = 0 at n = 2) or all differences 0; +-inf when all
    are equal and non-zero (no spread, not a huge effect).
    """
    d = snap_ties(_finite(d))
    d = d if higher_better else -d
    n = d.size
    if n < 3:
        return np.nan
    sd = d.std(ddof=1)
    mean = d.mean()
    if sd == 0:
        return np.nan if mean == 0 else math.copysign(math.inf, mean)
    return float(mean / sd * (1 - 3 / (4 * (n - 1) - 1)))


def rank_biserial(d: np.ndarray, higher_better: bool = True) -> float:
    """Matched-pairs rank-biserial correlation of ``d`` (n,): ``(R+ - R-) / (R+ + R-)`` in [-1, 1].

    Ranks of |d| over the non-zero differences after ``snap_ties`` (zeros dropped, as in the Wilcoxon test;
    ties get average ranks). +1: every non-zero difference favours the arm (positive, or negative when
    ``higher_better=False``). NaN when all differences are zero.
    """
    d = snap_ties(_finite(d))
    d = d if higher_better else -d
    d = d[d != 0]
    if d.size == 0:
        return np.nan
    r = stats.rankdata(np.abs(d))
    plus, minus = r[d > 0].sum(), r[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def prob_improvement(d: np.ndarray, higher_better: bool = True) -> float:
    """Share of seeds on which the arm beats the baseline, ties (``snap_ties`` zeros) counting half.
    ``d`` (n,) = arm - baseline."""
    d = snap_ties(_finite(d))
    if d.size == 0:
        return np.nan
    wins = (d > 0) if higher_better else (d < 0)
    return float((wins.sum() + 0.5 * (d == 0).sum()) / d.size)


def min_n_for_significance(alpha: float = 0.05, m: int = 1) -> int:
    """Smallest n at which an exact two-sided Wilcoxon test can reach ``alpha/m`` (Holm's smallest threshold).

    The smallest attainable two-sided p with n non-zero differences is ``2/2**n`` (all signs equal).
    ``m=3, alpha=0.05 -> 7``; ``m=9 -> 9``; ``m=1 -> 6``.
    """
    if not 0 < alpha < 1 or m < 1:
        raise AnalysisError(f"need 0 < alpha < 1 and m >= 1; got alpha={alpha}, m={m}")
    n = max(1, math.ceil(math.log2(2 * m / alpha)))
    while 2 / 2**n > alpha / m:  # guard against floating-point rounding in log2
        n += 1
    return n


def seeds_for_power(effect_size: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest number of paired seeds for which a two-sided, *uncorrected paired t-test* has ``power``.

    Not the headline procedure (a Holm-corrected Wilcoxon needs more seeds): the report plans with
    ``study.report.simulate.seeds_for_headline_power``. Kept as the textbook reference figure. ``inf`` when the
    effect is 0 (or > 1e8 seeds would be needed); NaN when d_z is undefined or infinite.
    """
    if not np.isfinite(effect_size):
        return np.nan
    es = abs(float(effect_size))
    if es == 0:
        return math.inf
    tp = TTestPower()

    def enough(n: int) -> bool:
        pw = tp.power(effect_size=es, nobs=n, alpha=alpha, alternative="two-sided")
        if np.isnan(pw):
            # The noncentral t's tail overflows only for enormous noncentrality, where power is ~1.
            return bool(es * math.sqrt(n) > 30)
        return bool(pw >= power)

    lo, hi = 1, 2
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > 10**8:
            return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return float(hi)


@lru_cache(maxsize=256)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(W+ <= w) for w = 0..n(n+1)/2 under the untied null with n non-zero differences, read-only.

    A dynamic program over the ranks (W+ is the sum of the ranks 1..n each present with probability 1/2);
    scipy keeps its exact distribution private, and tests/test_analysis.py checks p-values agree with
    ``scipy.stats.wilcoxon(method="exact")``.
    """
    pmf = np.zeros(n * (n + 1) // 2 + 1)
    pmf[0] = 1.0
    for k in range(1, n + 1):
        shifted = np.zeros_like(pmf)
        shifted[k:] = pmf[:-k]
        pmf = (pmf + shifted) / 2
    cdf = np.cumsum(pmf)
    cdf.flags.writeable = False
    return cdf


def signed_rank_exact_p(w_plus: np.ndarray, n: int) -> np.ndarray:
    """Two-sided exact p ``min(1, 2 min(P(W+ <= w), P(W+ >= w)))`` for integer ``w_plus`` (any shape), n
    untied non-zero differences (scipy's definition)."""
    cdf = _signed_rank_cdf(n)
    w = np.asarray(w_plus, dtype=np.int64)
    lower = cdf[w]
    upper = 1.0 - np.where(w > 0, cdf[np.maximum(w - 1, 0)], 0.0)
    return np.minimum(1.0, 2 * np.minimum(lower, upper))


def signed_rank_pvalues(
    diffs: np.ndarray, tol: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided Wilcoxon signed-rank p-values for each row of ``diffs`` ``(n_tests, n_pairs)``.

    Differences are first snapped (``snap_ties`` with ``tol``, default ``tie_tolerance(diffs)``), so ties
    and zeros are those of the exact values. NaN cells are dropped pairs; zeros are dropped
    (``zero_method="wilcox"``). Per row: exact null distribution without ties and n_eff <= 50; an
    exhaustive sign-flip permutation test with ties and n_eff <= 13 (exact given the ties); the normal
    approximation with tie correction otherwise. Rows that share a shape and need the exact test are tested
    in one vectorised call, so a (studies x seeds) simulation runs in seconds.

    Returns ``(p (n_tests,), n_eff (n_tests,), method (n_tests,) str)``: p = 1 when every difference is
    zero (no evidence either way; the comparison still counts in its Holm family), NaN when a row has no
    finite difference.
    """
    diffs = snap_ties(np.atleast_2d(np.asarray(diffs, dtype=float)), tol)
    n_tests = diffs.shape[0]
    p = np.full(n_tests, np.nan)
    methods = np.full(n_tests, "n/a (no pairs)", dtype=object)
    nonzero = np.isfinite(diffs) & (diffs != 0)
    n_eff = nonzero.sum(axis=1)
    all_zero = (n_eff == 0) & np.isfinite(diffs).any(axis=1)
    p[all_zero] = 1.0
    methods[all_zero] = "all differences zero (p = 1)"
    absd = np.abs(np.where(nonzero, diffs, np.nan))
    s = np.sort(absd, axis=1)
    has_ties = np.any(s[:, 1:] == s[:, :-1], axis=1)
    full = nonzero.all(axis=1)
    fast = full & ~has_ties & (n_eff <= EXACT_MAX_N) & (n_eff > 0)
    if fast.any():
        p[fast] = stats.wilcoxon(diffs[fast], zero_method=ZERO_METHOD, method="exact", axis=1).pvalue
        methods[fast] = "exact"
    rest = np.flatnonzero(~fast & (n_eff > 0))
    flips = rest[has_ties[rest] & (n_eff[rest] <= PERMUTATION_MAX_N)]
    for k in np.unique(n_eff[flips]):
        rows = flips[n_eff[flips] == k]
        d = np.stack([diffs[i, nonzero[i]] for i in rows])
        p[rows] = _sign_flip_p(d)
        methods[rows] = "permutation (exact, ties)"
    for i in np.setdiff1d(rest, flips):
        d = diffs[i, nonzero[i]]
        exact = not has_ties[i] and d.size <= EXACT_MAX_N
        p[i] = stats.wilcoxon(d, zero_method=ZERO_METHOD, method="exact" if exact else "asymptotic").pvalue
        methods[i] = "exact" if exact else "normal approximation"
    return p, n_eff, methods


@lru_cache(maxsize=16)
def _sign_patterns(n: int) -> np.ndarray:
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(float)  # (2**n, n)


def _sign_flip_p(d: np.ndarray) -> np.ndarray:
    """Two-sided p of the exhaustive sign-flip test of W+ (mid-ranks of |d|) for rows of non-zero ``d``
    ``(rows, n)``: what ``scipy.stats.wilcoxon(d, method=PermutationMethod(n_resamples=2**n))`` returns
    (tests check it), computed for all rows at once (scipy takes ~50 ms per row)."""
    r = stats.rankdata(np.abs(d), axis=1)
    observed = np.where(d > 0, r, 0.0).sum(axis=1)
    null = r @ _sign_patterns(d.shape[1]).T  # (rows, 2**n); mid-ranks are halves: sums are exact
    less = (null <= observed[:, None]).mean(axis=1)
    greater = (null >= observed[:, None]).mean(axis=1)
    return np.minimum(1.0, 2 * np.minimum(less, greater))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values along the last axis of ``pvalues`` ``(..., m)``; NaN entries are not tested.

    A 1-D family goes through ``statsmodels.stats.multitest.multipletests(method="holm")`` (its default
    method is not Holm). Batches of families (``ndim >= 2``, e.g. a (studies, m) simulation, or the report's
    regimes padded with NaN) use the same step-down rule vectorised in numpy, because ``multipletests``
    runs ``gc.collect()`` on every call (~50 ms). tests/test_analysis.py checks both paths agree.
    """
    p = np.atleast_1d(np.asarray(pvalues, dtype=float))
    if p.ndim == 1:
        out = np.full(p.shape, np.nan)
        ok = np.isfinite(p)
        if ok.any():
            out[ok] = multipletests(p[ok], method="holm")[1]
        return out
    return _holm_vectorised(p)


def _holm_vectorised(p: np.ndarray) -> np.ndarray:
    """Holm step-down on ``p`` ``(..., m)``: sorted p_(i) -> max_{j<=i} min(1, (m_f - j) p_(j)), j 0-based,
    m_f = finite p-values in the family; NaN stays NaN."""
    order = np.argsort(p, axis=-1)  # NaN sorts last
    sorted_p = np.take_along_axis(p, order, axis=-1)
    m_f = np.isfinite(p).sum(axis=-1, keepdims=True)
    factors = m_f - np.arange(p.shape[-1])
    adjusted = np.maximum.accumulate(np.minimum(1.0, factors * sorted_p), axis=-1)
    adjusted = np.where(np.isfinite(sorted_p), adjusted, np.nan)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def hodges_lehmann_ci(d: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, float, str]:
    """Hodges-Lehmann location of ``d`` (n,) with its exact signed-rank confidence interval.

    The estimate is the median of the n(n+1)/2 Walsh averages (d_i + d_j)/2, i <= j; the interval is
    ``[W_(k), W_(M+1-k)]`` of the sorted Walsh averages, k the largest integer with P(W+ <= k-1) <=
    (1 - confidence)/2 under the exact untied null (``_signed_rank_cdf``). It is the set of shifts the
    two-sided signed-rank test does not reject, so without ties or zeros it excludes 0 exactly when the
    uncorrected exact Wilcoxon p is <= 1 - confidence. Zeros and ties (after ``snap_ties``) are kept in the
    Walsh averages; with ties the achieved level is approximate (labelled). Assumes differences symmetric
    about their centre (then centre = median = mean).

    Returns ``(estimate, low, high, achieved_confidence, method)``; bounds NaN (with the reason in
    ``method``) when n is too small for any finite interval at ``confidence`` (n < 6 at 95 %).
    """
    d = snap_ties(_finite(d))
    n = d.size
    if n == 0:
        return np.nan, np.nan, np.nan, np.nan, "n/a (no pairs)"
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    est = float(np.median(walsh))
    cdf = _signed_rank_cdf(n)
    k = int(np.searchsorted(cdf, (1 - confidence) / 2 * (1 + 1e-12), side="right"))  # P(W+ <= k-1) <= a/2
    if k == 0:
        return (
            est,
            np.nan,
            np.nan,
            np.nan,
            f"n/a (n = {n} too small for a {100 * confidence:g} % signed-rank CI)",
        )
    m = walsh.size
    achieved = 1 - 2 * float(cdf[k - 1])
    has_ties = np.any(np.diff(np.sort(np.abs(d[d != 0]))) == 0) or np.any(d == 0)
    method = "exact signed-rank (Walsh averages)" + ("; ties or zeros: level approximate" if has_ties else "")
    return est, float(walsh[k - 1]), float(walsh[m - k]), achieved, method


def mean_t_ci(d: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(p_ttest, low, high)``: the one-sample t-test of ``d`` (n,) (= ``scipy.stats.ttest_rel`` of the
    pairs; tests check it) and the t-interval of the mean, ``mean +- t_{n-1}(1 - a/2) SD/sqrt(n)``, on
    ``snap_ties(d)``. All NaN for n < 2; the interval is the point itself (p NaN) without spread."""
    d = snap_ties(_finite(d))
    n = d.size
    if n < 2:
        return np.nan, np.nan, np.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return np.nan, mean, mean
    se = sd / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * se
    return p, mean - half, mean + half


def bootstrap_mean_diff_ci(
    arm: np.ndarray, base: np.ndarray, confidence: float, n_resamples: int, rng: np.random.Generator
) -> tuple[float, float, str]:
    """BCa bootstrap CI of ``mean(arm - base)`` over paired seeds (both (n,)); percentile when BCa is
    undefined. Not reported: it covers ~90 % at n = 8 (STATISTICS.md); kept for the simulation bench.

    Returns ``(low, high, method)``; method ``"BCa"``, ``"percentile (...)"``, ``"degenerate (...)"`` or
    ``"n/a (n < 2)"``.
    """
    n = arm.size
    if n < 2:
        return np.nan, np.nan, "n/a (n < 2)"

    def mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(a - b, axis=axis)

    def run(method: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            # Degenerate data is detected from the NaN result below and reported in `method`.
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.bootstrap(
                (arm, base),
                mean_diff,
                paired=True,
                vectorized=True,
                method=method,
                confidence_level=confidence,
                n_resamples=n_resamples,
                rng=rng,
            )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    d = snap_ties(arm - base, tie_tolerance(arm, base))
    if np.all(d == d[0]):
        # Every resample has the same mean (up to float noise): no interval to estimate.
        return float(d[0]), float(d[0]), "degenerate (all differences equal)"
    low, high = run("BCa")
    if np.isfinite(low) and np.isfinite(high):
        return low, high, "BCa"
    low, high = run("percentile")
    return low, high, "percentile (BCa undefined for these data)"


FAMILIES = ("study", "regime")


def _family(family: str) -> str:
    # "table" was this setting's earlier name for the study-wide family.
    f = "study" if family == "table" else family
    if f not in FAMILIES:
        raise AnalysisError(
            f"family must be 'study' (Holm over every comparison) or 'regime'; got {family!r}"
        )
    return f


COMPARISON_COLUMNS = [
    LABEL_FRACTION,
    "regime",
    "regime_title",
    "arm",
    "arm_title",
    "metric",
    "n",
    "n_nonzero",
    "dropped_seeds",
    "mean_baseline",
    "mean_arm",
    "mean_diff",
    "sd_diff",
    "mean_ci_low",
    "mean_ci_high",
    "hl_estimate",
    "hl_ci_low",
    "hl_ci_high",
    "hl_ci_level",
    "hl_ci_method",
    "p_wilcoxon",
    "wilcoxon_method",
    "p_ttest",
    "p_holm",
    "p_holm_regime",
    "p_holm_study",
    "holm_family",
    "family_size",
    "hedges_gz",
    "rank_biserial",
    "prob_improvement",
    "min_n_for_significance",
    "underpowered",
    "warning",
    "significant",
    "headline",
]


def compare_to_baseline(
    df: pd.DataFrame,
    metric: str = "test_auc",
    alpha: float = 0.05,
    family: Literal["study", "regime", "table"] = "study",
    *,
    pairing: Pairing | None = None,
) -> pd.DataFrame:
    """Each SSL arm vs the baseline within each regime of each label fraction, paired by seed. One row per
    (label fraction, regime, arm), fractions ascending, then regimes, then arms.

    ``df``: the full tidy table (``load_run``); excluded seeds are dropped pairwise (``dropped_seeds``).
    Differences are ``arm - baseline`` in the metric's units (fractions for classification metrics), with
    floating-point noise removed (``snap_ties``) before any rank, tie, zero or spread check. The pairing key
    is (seed, label fraction): for one seed every arm fine-tuned on the same labelled subset. ``pairing``:
    ``check_pairing(df, metric)`` when the caller already has it.

    ``family``: the Holm family of the headline p. ``"study"`` (default): every comparison in the table
    (m = SSL arms x regimes x label fractions), so the chance that a study with no true effect lists any
    significant result stays <= alpha; ``"regime"``: the SSL arms within one regime of one label fraction
    (m = SSL arms), which lets the study-wise rate grow with the regimes and fractions (~12 % with 3 regimes;
    ``study.report.simulate.null_rejection_rates``). ``"table"`` is an alias of ``"study"``. Both adjusted p are
    always reported (``p_holm_study``, ``p_holm_regime``).

    Columns (``COMPARISON_COLUMNS``): ``label_fraction`` (1.0 for a table without the column); ``n`` paired
    seeds; ``n_nonzero`` non-zero differences (the Wilcoxon
    test's n); means, ``mean_diff``/``sd_diff`` and ``mean_ci_low/high`` the (1 - alpha) t-interval of the
    mean; ``hl_estimate`` Hodges-Lehmann location with ``hl_ci_low/high`` its exact signed-rank interval
    (the interval of the headline test; ``hl_ci_level`` its achieved confidence, ``hl_ci_method``); neither
    interval is adjusted for multiplicity. ``p_wilcoxon`` (two-sided, ``signed_rank_pvalues``; 1 when every
    difference is 0), ``p_ttest``; ``p_holm`` the headline over ``holm_family`` ("study" or the regime) of
    ``family_size`` comparisons (a comparison with no pairs counts in m but gets no p); effect sizes with
    one sign convention, positive = arm better (also for lower-is-better metrics): ``hedges_gz``,
    ``rank_biserial``, ``prob_improvement`` (ties half); ``min_n_for_significance`` (exact Wilcoxon floor
    vs alpha/family_size), ``underpowered`` when ``n_nonzero`` is below it, with ``warning``;
    ``significant`` = ``p_holm < alpha``; ``headline``. Nothing here is random (no bootstrap).
    """
    family = _family(family)
    if not 0 < alpha < 1:
        raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")
    df = with_label_fraction(df)
    pairing = check_pairing(df, metric) if pairing is None else pairing
    col = pairing.metric
    rows: list[dict[str, Any]] = []
    for cell in pairing.cells:
        matrix, seeds, arm_cols = _paired_matrix(df, pairing, cell)
        base = matrix[:, 0]
        for j, arm in enumerate(arm_cols[1:], start=1):
            a = matrix[:, j]
            keep = np.isfinite(a) & np.isfinite(base)
            rows.append(
                {LABEL_FRACTION: cell[0]}
                | _compare_one(cell[1], arm, col, a[keep], base[keep], seeds[~keep], alpha)
            )
    if not rows:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    out = pd.DataFrame(rows)
    several = pairing.several_fractions
    # Holm counts every planned comparison: one without pairs (NaN p) enters as p = 1, then shows NaN.
    p = out["p_wilcoxon"].to_numpy(dtype=float)
    tested = np.isfinite(p)
    p_in = np.where(tested, p, 1.0)
    # 2-D calls take holm's vectorised path (multipletests runs gc.collect(): ~50 ms a call).
    out["p_holm_study"] = np.where(tested, holm(p_in[None, :])[0], np.nan)
    groups = out.groupby([LABEL_FRACTION, "regime"], sort=False).indices  # the per-regime family: one cell
    padded = np.full((len(groups), max(map(len, groups.values()))), np.nan)
    for g, idx in enumerate(groups.values()):
        padded[g, : len(idx)] = p_in[idx]
    adj = holm(padded)
    p_regime = np.empty(len(out))
    for g, idx in enumerate(groups.values()):
        p_regime[idx] = adj[g, : len(idx)]
    out["p_holm_regime"] = np.where(tested, p_regime, np.nan)
    if family == "study":
        out["holm_family"] = "study"
        out["family_size"] = len(out)
        out["p_holm"] = out["p_holm_study"]
    else:
        out["holm_family"] = (
            [f"{r} at label fraction {f:g}" for f, r in zip(out[LABEL_FRACTION], out["regime"])]
            if several
            else out["regime"]
        )
        out["family_size"] = out.groupby([LABEL_FRACTION, "regime"])["arm"].transform("size")
        out["p_holm"] = out["p_holm_regime"]
    out["min_n_for_significance"] = [min_n_for_significance(alpha, int(m)) for m in out["family_size"]]
    out["underpowered"] = out["n_nonzero"] < out["min_n_for_significance"]
    out["significant"] = out["p_holm"] < alpha
    records = out.to_dict("records")
    out["warning"] = [_underpowered_text(r, alpha, several) if r["underpowered"] else "" for r in records]
    out["headline"] = [headline(r, alpha, with_fraction=several) for r in records]
    return out[COMPARISON_COLUMNS]


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


def _paired_matrix(
    df: pd.DataFrame, pairing: Pairing, cell: Cell
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``paired_matrix`` for an already checked pairing and one (label fraction, regime) ``cell``."""
    arms = list(pairing.arms)
    df = with_label_fraction(df)
    sub = df[(df[LABEL_FRACTION] == cell[0]) & (df["regime"] == cell[1]) & (df["status"] == "ok")]
    wide = sub.pivot(index="seed", columns="arm", values=pairing.metric)
    seeds = np.asarray(pairing.seeds[cell], dtype=np.int64)
    wide = wide.reindex(index=seeds, columns=arms)
    return wide.to_numpy(dtype=float, na_value=np.nan), seeds, arms


def _compare_one(
    regime: str, arm: str, col: str, a: np.ndarray, b: np.ndarray, dropped: np.ndarray, alpha: float
) -> dict[str, Any]:
    higher = higher_is_better(col)
    d = snap_ties(a - b, tie_tolerance(a, b))
    n = d.size
    p_w, n_eff, method = (
        signed_rank_pvalues(d[None, :], tol=0.0) if n else ([np.nan], [0], ["n/a (no pairs)"])
    )
    p_t, t_low, t_high = mean_t_ci(d, 1 - alpha)
    hl, hl_low, hl_high, hl_level, hl_method = hodges_lehmann_ci(d, 1 - alpha)
    return {
        "regime": regime,
        "regime_title": regime_title(regime),
        "arm": arm,
        "arm_title": arm_title(arm),
        "metric": col,
        "n": n,
        "n_nonzero": int(n_eff[0]),
        "dropped_seeds": _seed_list(dropped),
        "mean_baseline": b.mean() if n else np.nan,
        "mean_arm": a.mean() if n else np.nan,
        "mean_diff": d.mean() if n else np.nan,
        "sd_diff": float(d.std(ddof=1)) if n > 1 else np.nan,
        "mean_ci_low": t_low,
        "mean_ci_high": t_high,
        "hl_estimate": hl,
        "hl_ci_low": hl_low,
        "hl_ci_high": hl_high,
        "hl_ci_level": hl_level,
        "hl_ci_method": hl_method,
        "p_wilcoxon": float(p_w[0]),
        "wilcoxon_method": str(method[0]),
        "p_ttest": p_t,
        "hedges_gz": hedges_gz(d, higher),
        "rank_biserial": rank_biserial(d, higher),
        "prob_improvement": prob_improvement(d, higher),
    }


def _underpowered_text(row: dict[str, Any], alpha: float, with_fraction: bool = False) -> str:
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


def format_diff(value: float, metric: str) -> str:
    """Signed difference for text: percentage points for fractions (``+1.4 pp``), raw units otherwise."""
    if not np.isfinite(value):
        return "n/a"
    if metric in FRACTION_METRICS:
        return f"{_signed(value * 100, 1)} pp"
    return _signed(value, 3, general=True)


def _signed(x: float, digits: int, general: bool = False) -> str:
    s = f"{abs(x):.{digits}g}" if general else f"{abs(x):.{digits}f}"
    if float(s) == 0:
        return s
    return ("+" if x > 0 else "\u2212") + s


def _bound(x: float, percent_points: bool) -> str:
    # Interval ends carry a sign only when negative (a typographic minus), as in "[−0.3, 3.1]".
    s = f"{x:.1f}" if percent_points else f"{x:.3g}"
    if not s.startswith("-"):
        return s
    return s[1:] if float(s) == 0 else "\u2212" + s[1:]


def format_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


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
        f"{round((1 - alpha) * 100):g} % signed-rank CI [{_bound(r['hl_ci_low'] * scale, bool(unit))}, "
        f"{_bound(r['hl_ci_high'] * scale, bool(unit))}]"
        if np.isfinite(r["hl_ci_low"])
        else f"signed-rank CI n/a (n = {n})"
    )
    dropped = r.get("dropped_seeds") or ""
    n_text = f"n = {n} seed{'s' if n != 1 else ''}"
    if dropped:
        n_text += f" ({len(str(dropped).split(','))} excluded)"
    verdict = "significant" if r["significant"] else "not significant"
    if r["significant"]:
        better = bool(arm_better(r["hl_estimate"], r["mean_diff"], metric))
        verdict += " (arm better)" if better else " (arm worse)"
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


# ----------------------------------------------------------------------------------------------- across arms


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's q_alpha for k arms: studentized range quantile (infinite df) / sqrt(2). k=4 -> 2.569."""
    if k < 2:
        return np.nan
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def friedman(
    df: pd.DataFrame,
    metric: str,
    regime: str,
    alpha: float = 0.05,
    *,
    label_fraction: float | None = None,
    pairing: Pairing | None = None,
) -> dict[str, Any]:
    """Friedman test over all arms in one regime (of ``label_fraction``: required when the table has several),
    with mean ranks and the Nemenyi critical difference. ``pairing``: as in ``paired_matrix``.

    Complete blocks only: a seed with any excluded/missing cell is dropped (listwise; ``dropped_seeds``).
    Rank 1 = best (highest metric; lowest for losses); ties get average ranks.

    Returns a dict: ``label_fraction, regime, metric, arms`` (list), ``n`` (blocks), ``k``, ``statistic``, ``p``,
    ``mean_ranks`` (dict arm -> mean rank), ``q_alpha``, ``cd`` = q_alpha*sqrt(k(k+1)/(6n)), ``cliques``
    (lists of arms, in rank order, whose mean ranks lie within one CD: no difference detected),
    ``dropped_seeds`` (list) and ``note`` (why a value is NaN, else ""). Statistic and p are NaN for k < 3
    (use the paired comparison) or n < 2.
    """
    pairing = check_pairing(df, metric) if pairing is None else pairing
    fraction = pairing._fraction(label_fraction)
    matrix, seeds, arms = paired_matrix(df, metric, regime, label_fraction=fraction, pairing=pairing)
    col = metric_column(metric, df.columns)
    complete = np.isfinite(matrix).all(axis=1)
    x = matrix[complete]
    n, k = x.shape
    result: dict[str, Any] = {
        LABEL_FRACTION: fraction,
        "regime": regime,
        "metric": col,
        "arms": arms,
        "n": int(n),
        "k": int(k),
        "statistic": np.nan,
        "p": np.nan,
        "mean_ranks": {},
        "q_alpha": nemenyi_q(k, alpha),
        "cd": np.nan,
        "cliques": [],
        "dropped_seeds": [int(s) for s in seeds[~complete]],
        "note": "",
    }
    if n >= 1 and k >= 2:
        signed = -x if higher_is_better(col) else x
        ranks = stats.rankdata(signed, axis=1)
        result["mean_ranks"] = {a: float(r) for a, r in zip(arms, ranks.mean(axis=0))}
    if k < 3:
        result["note"] = f"Friedman needs at least 3 arms (this regime has {k}); see the paired comparison"
        return result
    if n < 2:
        result["note"] = f"Friedman needs at least 2 complete seeds (this regime has {n})"
        return result
    result["cd"] = float(result["q_alpha"] * math.sqrt(k * (k + 1) / (6 * n)))
    result["cliques"] = _cliques(result["mean_ranks"], result["cd"])
    if np.all(np.ptp(x, axis=1) == 0):
        result["note"] = "all arms tie on every seed: no ranking to test"
        return result
    res = stats.friedmanchisquare(*x.T)
    result["statistic"], result["p"] = float(res.statistic), float(res.pvalue)
    return result


def _cliques(mean_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Maximal runs of rank-ordered arms whose mean-rank range is below ``cd`` (a CD diagram's bars)."""
    items = sorted(mean_ranks.items(), key=lambda kv: kv[1])
    runs = []
    for i in range(len(items)):
        j = i
        while j + 1 < len(items) and items[j + 1][1] - items[i][1] < cd:
            j += 1
        if j > i:
            runs.append((i, j))
    maximal = [r for r in runs if not any(o != r and o[0] <= r[0] and r[1] <= o[1] for o in runs)]
    return [[items[t][0] for t in range(i, j + 1)] for i, j in maximal]


# ---------------------------------------------------------------------------------------- pretext metrics


def pretext_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The pretext tables over seeds, one per `study.tasks.registry.tables()` name: `rotation` and `image` are the
    paper's Tables 2 (rotation) and 3 (missing patch, corruption removal); a registered task names its table
    (`PretextTask.table`) and the metrics listed in it (`PretextTask.metrics`).

    A trial's pretext metrics repeat on each of its regime rows, and trials of the same arm and seed share
    one pretext model, so values are first reduced to one per arm x seed, then aggregated across seeds. A
    pretext phase that finished counts even when the trial's fine-tune later diverged or failed (its metrics
    describe the pretext model); a diverged pretext has no finite metrics and drops out. Long format,
    columns ``arm, arm_title, task, metric, n, mean, sd`` (n = seeds with a finite value; sd ddof=1, NaN when
    n < 2); e.g. image tasks list ``pretext_region_mse`` (inside the corrupted region) and, for the missing
    patch, ``pretext_composite_mse/ssim`` (model output pasted into the hole) when the table has them.
    Every registered table is in the result; one is empty when no arm of it has a finite pretext value. Arms
    of tasks not registered here are in none (``unregistered_tasks`` names them). With several label
    fractions the pretext is still one per arm x seed (the fractions share it), so it is counted once.
    """
    per_seed = _per_arm_seed(df)
    return {table: _pretext_table(per_seed, table) for table in _pretext.tables()}


def unregistered_tasks(df: pd.DataFrame) -> list[str]:
    """Tasks of the table's SSL arms that are not registered here: their pretext metrics are in no table."""
    return sorted(set(df["task"].dropna()) - {"none", *_pretext.TASKS})


def _per_arm_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per arm x seed (first appearance order): each column's first non-missing value over the rows
    of that arm and seed (its regimes and label fractions: one pretext model per task and seed serves them
    all, so a fraction whose trial failed before recording it does not hide the value another recorded)."""
    if not df.duplicated(["arm", "seed"]).any():
        return df
    return df.groupby(["arm", "seed"], sort=False, dropna=False).first().reset_index()


def _pretext_table(per_seed: pd.DataFrame, table: str) -> pd.DataFrame:
    cols = ["arm", "arm_title", "task", "metric", "n", "mean", "sd"]
    tasks = [name for name, task in _pretext.TASKS.items() if task.table == table]
    rows = []
    for arm in arm_order(per_seed.loc[per_seed["task"].isin(tasks), "arm"]):
        g = per_seed[per_seed["arm"] == arm]
        task = str(g["task"].iloc[0])
        for m in (f"pretext_{name}" for name in _pretext.TASKS[task].metrics):
            if m not in g.columns:
                continue
            x = g[m].to_numpy(dtype=float)
            x = x[np.isfinite(x)]
            if x.size == 0:
                continue
            rows.append(
                {
                    "arm": arm,
                    "arm_title": arm_title(arm),
                    "task": task,
                    "metric": m,
                    "n": x.size,
                    "mean": x.mean(),
                    "sd": x.std(ddof=1) if x.size > 1 else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------- pretext references and the linear probe
# results.csv columns read here (all constant within a trial, missing for the baseline and for older runs):
#   pretext_headline                 the metric deciding whether a task's pretext learned (text)
#   pretext_<metric>                 the model's value on the pretext test pairs
#   pretext_ref_<name>_<metric>      a learning-free reference's value (name in REFERENCE_TITLES)
#   pretext_ref_<metric>             the best reference on that metric; pretext_ref_name: best on the headline
#   pretext_learned                  the model beats the best reference on the headline metric (bool)
#   pretext_biharmonic_subset_region_mse, pretext_ref_biharmonic_region_mse, pretext_biharmonic_n,
#   pretext_beats_classical          missing patch vs a classical inpainter on a subsample of test images
#   probe_auc, probe_c               linear probe on the frozen encoder: test AUC (fraction), its inverse
#                                    regularisation

REFERENCE_TITLES = {
    "constant": "a constant prediction",
    "chance": "chance",
    "majority": "the majority class",
    "identity": "the corrupted input (identity)",
    "meanfill": "a mean-colour fill",
    "biharmonic": "a biharmonic inpainter",
    "initial": "the encoder before the pretext phase",
}
# "Did the pretext learn" is judged against these (one list, the verdict's own); the classical inpainter is a
# stronger bar, shown beside.
TRIVIAL_REFERENCES = _references.TRIVIAL
# (model metric, reference metric) pairs, headline metrics and which metrics are better when larger: the
# registry's (`PretextTask.reference_pairs`, `.headline`, `.higher_is_better`).
# Model metric name of the classical-inpainter comparison (its own row, on the inpainter's subsample).
BIHARMONIC_METRIC = "biharmonic_subset_region_mse"
PRETEXT_REFERENCE_COLUMNS = [
    "arm",
    "arm_title",
    "task",
    "metric",
    "reference_metric",
    "headline",
    "higher_is_better",
    "n",
    "model_mean",
    "model_sd",
    "reference",
    "ref_mean",
    "ref_sd",
    "ratio_mean",
    "n_better",
    "n_judged",
    "images",
]


def pretext_reference_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each pretext arm's model metrics beside the best trivial reference, over seeds. Long format.

    ``df``: the results table (one row per trial x regime; reduced to one row per arm x seed, counting a
    pretext whose fine-tune later failed, as ``pretext_tables`` does). One row per arm x compared metric
    (the task's ``reference_pairs`` in the registry, its headline metric first, then the biharmonic
    comparison for a task scored against the biharmonic inpainter), only where both model and reference
    values exist; arms of tasks not registered here are left out. Columns: ``metric`` /
    ``reference_metric`` without the ``pretext_`` prefix; ``headline`` (bool); ``n`` seeds with both values;
    ``model_mean, model_sd, ref_mean, ref_sd`` over those seeds (metric units: degrees, squared error on the
    0-255 scale, SSIM, fraction; sd ddof=1, NaN when n < 2); ``reference`` the best reference's name(s) over
    seeds ("identity/meanfill" when it varies); ``ratio_mean`` the mean over seeds of model / reference;
    ``n_better`` of ``n_judged`` seeds on which the model beats the reference: for the headline metric the
    runner's ``pretext_learned`` (which leaves out diverged pretexts) when present, for the biharmonic row
    ``pretext_beats_classical``, else the values compared; ``images`` the biharmonic subsample size (median
    over seeds), else NaN. Empty when the table has no reference columns (runs before they were recorded).
    """
    per_seed = _per_arm_seed(df)
    rows = []
    for arm in arm_order(per_seed.loc[per_seed["task"].isin(list(_pretext.TASKS)), "arm"]):
        g = per_seed[per_seed["arm"] == arm]
        task = str(g["task"].iloc[0])
        spec = _pretext.TASKS[task]
        head = _pretext_headline(g, spec)
        pairs = list(spec.reference_pairs)
        if head not in [m for m, _ in pairs]:  # a headline the runner chose that this table does not list
            pairs.append((head, head))
        for model_metric, ref_metric in sorted(pairs, key=lambda pr: pr[0] != head):
            higher = ref_metric in _references.HIGHER_IS_BETTER or ref_metric in spec.higher_is_better
            ref, names = _best_reference(g, ref_metric, higher, spec.references or ())
            is_head = model_metric == head
            if is_head and "pretext_ref_name" in g:
                names = [n if isinstance(n, str) and n else m for n, m in zip(g["pretext_ref_name"], names)]
            row = _reference_row(
                _float_column(g, f"pretext_{model_metric}"),
                ref,
                names,
                higher,
                g["pretext_learned"] if is_head and "pretext_learned" in g else None,
            )
            if row:
                rows.append(_row_ident(arm, task, model_metric, ref_metric, is_head, higher) | row)
        if "biharmonic" in spec.references:
            row = _reference_row(
                _float_column(g, f"pretext_{BIHARMONIC_METRIC}"),
                _float_column(g, "pretext_ref_biharmonic_region_mse"),
                ["biharmonic"] * len(g),
                False,
                g["pretext_beats_classical"] if "pretext_beats_classical" in g else None,
            )
            if row:
                images = _float_column(g, "pretext_biharmonic_n")
                row["images"] = (
                    float(np.median(images[np.isfinite(images)])) if np.isfinite(images).any() else np.nan
                )
                rows.append(_row_ident(arm, task, BIHARMONIC_METRIC, "region_mse", False, False) | row)
    return pd.DataFrame(rows, columns=PRETEXT_REFERENCE_COLUMNS)


def _row_ident(arm: str, task: str, metric: str, ref_metric: str, head: bool, higher: bool) -> dict[str, Any]:
    return {
        "arm": arm,
        "arm_title": arm_title(arm),
        "task": task,
        "metric": metric,
        "reference_metric": ref_metric,
        "headline": head,
        "higher_is_better": higher,
    }


def _pretext_headline(g: pd.DataFrame, task: _pretext.PretextTask) -> str:
    """The headline the runner recorded (`pretext_headline`), else the registry's (tables of older runs)."""
    values = (
        g["pretext_headline"].dropna().astype(str) if "pretext_headline" in g else pd.Series([], dtype=str)
    )
    return str(values.mode().iloc[0]) if len(values) else task.headline


def _float_column(g: pd.DataFrame, col: str) -> np.ndarray:
    """``g[col]`` as float (n,); NaN where absent or not a number."""
    if col not in g:
        return np.full(len(g), np.nan)
    return pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float)


def _best_reference(
    g: pd.DataFrame, metric: str, higher_better: bool, task_references: Sequence[str] = ()
) -> tuple[np.ndarray, list[str | None]]:
    """Per seed, the best trivial reference on ``metric``: ``(values (n,), names (n,))``.

    ``pretext_ref_<metric>`` when recorded, else the best of the ``pretext_ref_<name>_<metric>`` columns of
    ``TRIVIAL_REFERENCES`` and the task's own learning-free ``task_references`` (e.g. the contrastive
    tasks' "initial" encoder); a seed's name is the reference matching that value (None when none does)."""
    own = [n for n in task_references if n not in _references.CLASSICAL]  # the inpainter has its own row
    candidates = dict.fromkeys((*TRIVIAL_REFERENCES, *own))
    per_ref = {name: _float_column(g, f"pretext_ref_{name}_{metric}") for name in candidates}
    per_ref = {k: v for k, v in per_ref.items() if np.isfinite(v).any()}
    if f"pretext_ref_{metric}" in g:
        best = _float_column(g, f"pretext_ref_{metric}")
    elif per_ref:
        stack = np.vstack(list(per_ref.values()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN seeds stay NaN
            best = np.nanmax(stack, axis=0) if higher_better else np.nanmin(stack, axis=0)
    else:
        best = np.full(len(g), np.nan)
    names: list[str | None] = []
    for i, b in enumerate(best):
        match = [k for k, v in per_ref.items() if np.isfinite(b) and np.isclose(v[i], b, rtol=1e-9, atol=0)]
        names.append(match[0] if match else None)
    return best, names


def _reference_row(
    model: np.ndarray,
    ref: np.ndarray,
    names: Sequence[str | None],
    higher_better: bool,
    verdict: pd.Series | None,
) -> dict[str, Any]:
    """Model vs reference over the seeds with both values (all arrays (n_seeds,)); {} when there are none.

    ``verdict``: the runner's per-seed "model beats the reference" (bool-like), counted instead of the
    values when given."""
    both = np.isfinite(model) & np.isfinite(ref)
    if not both.any():
        return {}
    m, r = model[both], ref[both]
    if verdict is not None:
        judged = _boolean(verdict).dropna()
        n_better, n_judged = int(judged.sum()), int(judged.size)
    else:
        n_better, n_judged = int(np.sum(m > r if higher_better else m < r)), int(m.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = m / r
    ratio = ratio[np.isfinite(ratio)]
    used = [n for n, keep in zip(names, both) if keep and n]
    return {
        "n": int(m.size),
        "model_mean": m.mean(),
        "model_sd": m.std(ddof=1) if m.size > 1 else np.nan,
        "reference": "/".join(dict.fromkeys(used)) or "best reference",
        "ref_mean": r.mean(),
        "ref_sd": r.std(ddof=1) if r.size > 1 else np.nan,
        "ratio_mean": ratio.mean() if ratio.size else np.nan,
        "n_better": n_better,
        "n_judged": n_judged,
        "images": np.nan,
    }


def pretext_learned(reference_table: pd.DataFrame) -> pd.DataFrame:
    """Whether each arm's pretext learned: its headline rows of ``pretext_reference_table``.

    Columns ``arm, arm_title, task, metric, reference, n_learned, n_judged, learned_seeds`` ("k/n") and
    ``majority_failed`` (the pretext did not beat its reference on more than half of the judged seeds).
    """
    cols = ["arm", "arm_title", "task", "metric", "reference", "n_learned", "n_judged"]
    t = reference_table[reference_table["headline"].astype(bool) & (reference_table["n_judged"] > 0)]
    out = t.rename(columns={"n_better": "n_learned"})[cols].reset_index(drop=True)
    out["n_learned"] = out["n_learned"].astype(int)
    out["n_judged"] = out["n_judged"].astype(int)
    out["learned_seeds"] = [f"{k}/{n}" for k, n in zip(out["n_learned"], out["n_judged"])]
    out["majority_failed"] = (out["n_judged"] - out["n_learned"]) > out["n_judged"] / 2
    return out


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
            c = _float_column(g, "probe_c")
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


# ------------------------------------------------------- end of pretext references and the linear probe


# ------------------------------------------------------------------------------------------ learning curves


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


# ----------------------------------------------------------------------------------------- sanity checks


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
