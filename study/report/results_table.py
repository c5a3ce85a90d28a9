"""Reading a run's tables: ``results.csv`` and ``history.csv`` validated and typed (the columns are
``study.spec.schema``'s), and the rows the analysis leaves out with the reason why.

Everything is read as text first ("none" is a regime/task name, not a missing value) and typed here; a table
that breaks the contract raises ``ResultsTableError`` naming the column, row or trial at fault and the fix.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import (
    CLASSIFICATION_METRICS,
    DEFAULT_LABEL_FRACTION,
    LABEL_FRACTION,
    STATUSES,
    ResultsTableError,
    arm_order,
    base_task,
    regime_order,
    with_label_fraction,
)
from study.io.files import UnsafeFileError, read_regular
from study.report.sentences import exclusion_reason
from study.spec.schema import (
    HISTORY_REQUIRED_COLUMNS,
    OPTIONAL_STR_COLUMNS,
    REQUIRED_COLUMNS,
    optional_float_columns,
    optional_int_columns,
)


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


def boolean_column(s: pd.Series) -> pd.Series:
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
    df = _with_contract_columns(raw)
    df = _typed(_checked_identity(df))
    _check_outcomes(df)
    df = _expand_unreplayed(df)
    order_r = {r: i for i, r in enumerate(regime_order(df["regime"]))}
    order_a = {a: i for i, a in enumerate(arm_order(df["arm"]))}
    df = df.assign(_r=df["regime"].map(order_r), _a=df["arm"].map(order_a))
    df = df.sort_values([LABEL_FRACTION, "_r", "_a", "seed", "trial_id"], kind="stable")
    return df.drop(columns=["_r", "_a"]).reset_index(drop=True)


def _with_contract_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``raw`` with every optional contract column (missing values where absent); a table without
    a required column, or without rows, is a ``ResultsTableError``."""
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise ResultsTableError(
            f"results table lacks required column(s) {missing}; it must follow the results.csv contract in "
            "docs/ARCHITECTURE.md (re-run `study run` with the current runner, or add the columns)"
        )
    if len(raw) == 0:
        raise ResultsTableError("results table has no rows: no trial has finished yet; run the study first")
    df = raw.copy()
    for col in (*OPTIONAL_STR_COLUMNS, *optional_int_columns(), *optional_float_columns(), "pretext_cached"):
        if col not in df.columns:
            df[col] = np.nan
    return df


def _checked_identity(df: pd.DataFrame) -> pd.DataFrame:
    """Text columns stripped (empty = missing), then every row's identity checked: trial, arm, task and
    status present, status known, seed a whole number, label fraction in (0, 1]."""
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
    return df


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Whole-number columns as ``Int64``, metrics and other numeric columns as float, ``pretext_cached`` as
    nullable boolean."""
    float_columns = optional_float_columns()
    for col in ("patience", "stop_epoch", *optional_int_columns()):
        df[col] = _integer(df, col)
    for col in sorted(set(CLASSIFICATION_METRICS) | {"test_loss"} | set(float_columns)):
        df[col] = _numeric(df, col).astype(float)
    # Other pretext_* columns the runner adds (e.g. pretext_key, a cache hash) are typed only when numeric.
    for col in [c for c in df.columns if c.startswith("pretext_") and c not in float_columns]:
        if col != "pretext_cached":
            converted = pd.to_numeric(df[col], errors="coerce")
            if converted.notna().sum() == df[col].notna().sum():
                df[col] = converted.astype(float)
    df["pretext_cached"] = boolean_column(df["pretext_cached"])
    return df


def _check_outcomes(df: pd.DataFrame) -> None:
    """The baseline arm is exactly the task-"none" trials; every ok row has a regime and classification
    metrics in [0, 1] (fractions, not percentages)."""
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
    """A CSV of the run as text columns; an empty or unparsable file, or one that is not a regular file (a
    FIFO, a symlink: it comes with the run), is a `ResultsTableError` naming it."""
    try:
        data = read_regular(path)
    except (OSError, UnsafeFileError) as exc:
        raise ResultsTableError(f"{path} cannot be read ({exc})") from None
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
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


def split_valid(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the tidy table into rows usable for analysis (status ok) and excluded rows.

    Returns ``(valid, excluded)``; ``excluded`` has an added ``reason`` column (``"diverged at epoch 12"``,
    ``"error: <message>"``). Counts per arm: ``exclusion_summary(excluded)``.
    """
    ok = df["status"] == "ok"
    excluded = df.loc[~ok].copy()
    excluded["reason"] = [exclusion_reason(r) for r in excluded.itertuples(index=False)]
    return df.loc[ok].copy(), excluded


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
