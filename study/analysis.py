"""Paired statistics over a study's results table: tables in, numbers out (the words are the report's).

The design follows ``docs/STATS.md`` (shared docs); the tests, intervals and effect sizes themselves are in
``study.stats``:

* Seed ``s`` gives every arm the same data split, validation split and fine-tune order, so each SSL arm is
  compared with the baseline through per-seed *paired differences* ``d_s = arm_s - baseline_s``, within each
  early-stopping regime (``none``, ``patience3``, ...) and each label fraction (``label_fraction``: the share
  of the training labels the fine-tune sees; for one seed every arm gets the same labelled subset, and a
  smaller fraction's subset lies inside a larger one's). The pairing key is (seed, label fraction); a table
  without the column (older runs) is one fraction, 1.0.
* Headline test: the two-sided Wilcoxon signed-rank test on the paired differences, Holm-corrected
  (``p_holm``). A comparison whose differences are all zero has p = 1 and still counts in its Holm family.
* Holm family (``family``, default ``"study"``): every comparison in the table (m = SSL arms x regimes x
  label fractions), so the probability that a study with no true effect lists any significant comparison
  (the study-wise false-positive rate) is at most alpha. ``family="regime"`` corrects within each
  early-stopping regime of each label fraction only (m = SSL arms); its study-wise rate is ~12 % at n = 8
  with 3 regimes (``study.report.simulate``, STATISTICS.md), more with more fractions. Both adjusted p are
  reported (``p_holm_study``, ``p_holm_regime``). The study family needs more seeds (an exact test reaches
  0.05/9 only from n = 9).
* Intervals (1 - alpha, not adjusted for multiplicity) and effect sizes (positive = arm better) are
  ``study.stats``'; power of the headline procedure is simulated in ``study.report.simulate``.
* Across arms: Friedman test with the Iman–Davenport F from ``study.stats.FRIEDMAN_MIN_BLOCKS`` (5)
  complete seeds up, and each arm against the baseline from the mean ranks, Holm over those k - 1
  (``friedman``); secondary, since mean-rank comparisons depend on which arms are in the pool (Benavoli et
  al. 2016).

Tables: the tidy results table (``study.report.results_table.load_run``) has one row per trial x regime
(a trial is one arm x seed x label fraction). Matrices are ``(n_seeds, n_arms)`` for one (label fraction,
regime) cell: rows are seeds (blocks), columns are arms, baseline first. Metrics are fractions in [0, 1].
Titles, sentences and the report's rounding are added in ``study.report``.

Errors: every bad input raises a subclass of ``ValueError`` (``ResultsTableError``, ``PairingError``) whose
message names the arm / seed / column at fault and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from study.spec import schema
from study.stats import (
    AnalysisError,
    control_comparisons,
    friedman_test,
    hedges_gz,
    hodges_lehmann_ci,
    holm_planned,
    mean_t_ci,
    min_n_for_significance,
    prob_improvement,
    rank_biserial,
    signed_rank_pvalues,
    snap_ties,
    tie_tolerance,
)
from study.tasks import registry

BASELINE = "baseline"
STATUSES = ("ok", "diverged", "error")
CLASSIFICATION_METRICS = schema.CLASSIFICATION_METRICS
SUMMARY_METRICS = CLASSIFICATION_METRICS + ("stop_epoch",)
# Fractions in [0, 1]: rendered as % and differences as percentage points.
FRACTION_METRICS = frozenset(CLASSIFICATION_METRICS)
# Share of the training labels a trial's fine-tune saw: a design column, 1.0 when the table has none (older
# runs, and studies of one fraction written before the runner recorded it).
LABEL_FRACTION = "label_fraction"
DEFAULT_LABEL_FRACTION = 1.0


class ResultsTableError(AnalysisError):
    """results.csv / history.csv does not follow the contract in docs/ARCHITECTURE.md."""


class PairingError(AnalysisError):
    """Arms were not run on the same seeds, so a paired comparison is impossible."""


# ------------------------------------------------------------------------------------------------ order


def arm_stem(arm: str) -> str:
    """An arm's name without its parameters: `"<task>(<param>=50)" -> "<task>"`."""
    return arm.split("(", 1)[0].strip()


def base_task(arm: str) -> str:
    """`"<task>(<param>=50)" -> "<task>"`; `"baseline"` (or `"baseline(lr=0.01)"`) -> `"none"`."""
    stem = arm_stem(arm)
    return "none" if stem == BASELINE else stem


def task_rank(task: str) -> tuple[int, str]:
    """Sort key of a task: the baseline first, then the registry's order, then tasks not registered here."""
    order = ["none", *registry.TASKS]
    return (order.index(task) if task in order else len(order), task)


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
    cols = (
        set(columns)
        if columns is not None
        else set(schema.REQUIRED_COLUMNS) | set(schema.optional_float_columns())
    )
    cols |= set(SUMMARY_METRICS)
    for name in (metric, f"test_{metric}"):
        if name in cols:
            return name
    raise AnalysisError(
        f"unknown metric {metric!r}; use one of {sorted(c for c in cols if c.startswith('test_'))} "
        "(the 'test_' prefix is optional) or 'stop_epoch'"
    )


metric_direction = schema.metric_direction  # declared once: higher / lower is better, or none
orientation = schema.orientation
higher_is_better = schema.higher_is_better


def arm_better(hl_estimate: Any, mean_diff: Any, metric: str) -> Any:
    """Whether the arm beats the baseline (is higher, for a metric without a direction), by the sign of the
    Hodges-Lehmann estimate (the estimate of the signed-rank test, which decides significance; the mean
    difference only where it is undefined). Scalars or aligned arrays/Series in, bool(s) out."""
    hl, mean = np.asarray(hl_estimate, dtype=float), np.asarray(mean_diff, dtype=float)
    return np.where(np.isfinite(hl), hl, mean) * orientation(metric) > 0


# ------------------------------------------------------------------------------------------------ pairing


# Identity of a dropped value (``Pairing.dropped``), then what the report says about it.
DROPPED_KEYS = [LABEL_FRACTION, "regime", "arm", "seed", "trial_id", "status"]
Cell = tuple[float, str]  # (label fraction, regime): where one set of paired comparisons lives


@dataclass(frozen=True)
class Pairing:
    """Outcome of ``check_pairing``: which seeds every arm ran, and which cells cannot be used.

    ``cells``: the (label fraction, regime) pairs of the table, fractions ascending, then regimes in
    ``regime_order``; ``seeds[(label_fraction, regime)]``: seeds run for every arm in that cell (the table
    is paired on them: the pairing key is (seed, label fraction)). ``dropped``: one row per unusable value
    (``label_fraction, regime, arm, seed, trial_id, status, diverged_epoch, error``): the trial was excluded
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


def check_pairing(
    df: pd.DataFrame, metric: str = "test_auc", not_run: Mapping[str, Collection[int]] | None = None
) -> Pairing:
    """Check that, within each (label fraction, regime) cell, every arm ran exactly the baseline's seeds.

    Pass the *full* tidy table (``load_run``), excluded trials included: that is how a seed that was run
    but diverged/errored (dropped pairwise, listed in ``Pairing.dropped``) is told apart from a seed never
    run for an arm (the table is not paired: ``PairingError`` naming the arm, regime, fraction and seeds).
    Two trials for the same arm x seed x regime x label fraction are also a ``PairingError`` (which one would
    be the pair?). A table without ``label_fraction`` is one fraction, 1.0. ``not_run``: arm -> seeds it did
    not run by design (its comparison was decided at an earlier look, `study extend`): not a break of the
    pairing; its cells are missing values, dropped pairwise like an excluded trial's.
    """
    metric = metric_column(metric, df.columns)
    df = with_label_fraction(df)
    baseline = baseline_arm(df)
    arms = [baseline] + [a for a in arm_order(df["arm"]) if a != baseline]
    fractions = tuple(label_fractions(df))
    several = len(fractions) > 1

    def where(regime: str, f: float) -> str:
        return f"regime {regime!r}" + (f", label fraction {f:g}" if several else "")

    _check_duplicates(df, where)
    problems: list[str] = []
    seeds: dict[Cell, tuple[int, ...]] = {}
    dropped: list[dict[str, Any]] = []
    groups = {(float(f), str(r)): g for (f, r), g in df.groupby([LABEL_FRACTION, "regime"], sort=False)}
    for cell in cells(df):
        sub = groups[cell]
        base = set(sub.loc[sub["arm"] == baseline, "seed"])
        if not base:
            problems.append(f"{where(cell[1], cell[0])} has no baseline trials")
            continue
        problems += _unpaired_seeds(sub, base, arms[1:], where(cell[1], cell[0]), not_run or {})
        seeds[cell] = tuple(sorted(base))
        unusable = sub[(sub["status"] != "ok") | sub[metric].isna()]
        dropped += [_dropped_row(cell, r) for r in unusable.itertuples(index=False)]
    if problems:
        raise PairingError(
            "the table is not paired by seed: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Run the missing trials (every arm needs the same seeds; `study run` resumes a study) or drop "
            "those seeds from every arm. If they were excluded (diverged/error), pass the full table from "
            "load_run, not only the valid rows."
        )
    dropped_df = pd.DataFrame(dropped, columns=[*DROPPED_KEYS, "diverged_epoch", "error"])
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


def _check_duplicates(df: pd.DataFrame, where: Any) -> None:
    """``PairingError`` when an arm has two trials for one seed of one cell (which one would be the pair?);
    ``where(regime, fraction)`` names the cell."""
    keys = [LABEL_FRACTION, "regime", "arm", "seed"]
    dup = df.duplicated(keys, keep=False)
    if not dup.any():
        return
    problems = [
        f"arm {arm!r} has {len(g)} trials for seed {seed} in {where(regime, f)} "
        f"({', '.join(map(str, g['trial_id']))})"
        for (f, regime, arm, seed), g in df.loc[dup].groupby(keys, sort=False)
    ]
    raise PairingError(
        "; ".join(problems[:10]) + ". A paired comparison needs one trial per arm x seed: split the table "
        "(e.g. one analysis per learning rate) or remove the duplicate trials"
    )


def _unpaired_seeds(
    sub: pd.DataFrame, base: set[int], arms: Sequence[str], where: str, not_run: Mapping[str, Collection[int]]
) -> list[str]:
    """What breaks the pairing in one cell ``sub``: seeds the baseline (``base``) or an arm lacks (``not_run``:
    seeds an arm did not run by design)."""
    problems = []
    for arm in arms:
        have = set(sub.loc[sub["arm"] == arm, "seed"])
        missing = base - have - {int(s) for s in not_run.get(arm, ())}
        if missing:
            problems.append(
                f"arm {arm!r} ({where}) has no trial for seed(s) {_seed_list(missing)} that the baseline has"
            )
        if have - base:
            problems.append(
                f"the baseline ({where}) has no trial for seed(s) {_seed_list(have - base)} that arm {arm!r} has"
            )
    return problems


def _dropped_row(cell: Cell, r: Any) -> dict[str, Any]:
    """A row of ``Pairing.dropped`` for trial row ``r`` of ``cell``: its identity and why it is out."""
    return {
        LABEL_FRACTION: cell[0],
        "regime": cell[1],
        "arm": r.arm,
        "seed": int(r.seed),
        "trial_id": r.trial_id,
        "status": r.status,
        "diverged_epoch": getattr(r, "diverged_epoch", np.nan),
        "error": getattr(r, "error", np.nan),
    }


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


# -------------------------------------------------------------------------------------- descriptive tables


# ------------------------------------------------------------------------------- comparisons with the baseline


FAMILIES = ("primary", "study", "regime")


def resolve_family(family: str) -> str:
    """The Holm family's canonical name: ``"primary"``, ``"study"`` or ``"regime"`` (``AnalysisError`` otherwise)."""
    # "table" was this setting's earlier name for the study-wide family.
    f = "study" if family == "table" else family
    if f not in FAMILIES:
        raise AnalysisError(
            "family must be 'primary' (Holm over the declared primary cell, the rest a secondary family), "
            f"'study' (Holm over every comparison) or 'regime'; got {family!r}"
        )
    return f


COMPARISON_COLUMNS = [
    LABEL_FRACTION,
    "regime",
    "arm",
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
    "significant",
]


def compare_to_baseline(
    df: pd.DataFrame,
    metric: str = "test_auc",
    alpha: float = 0.05,
    family: Literal["primary", "study", "regime", "table"] = "study",
    *,
    pairing: Pairing | None = None,
    primary: Cell | None = None,
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
    always reported (``p_holm_study``, ``p_holm_regime``). ``"primary"``: the declared ``primary`` cell
    (label fraction, regime) is the headline family (m = SSL arms); every other comparison is one secondary
    family (``holm_family`` "secondary"), exploratory.

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
    vs alpha/family_size), ``underpowered`` when ``n_nonzero`` is below it; ``significant`` = ``p_holm <
    alpha``. Nothing here is random (no bootstrap). ``study.report.tables.comparison_table`` adds the titles,
    the warning of an underpowered comparison and its headline sentence.
    """
    family = resolve_family(family)
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
    p = out["p_wilcoxon"].to_numpy(dtype=float)
    per_cell = list(out.groupby([LABEL_FRACTION, "regime"], sort=False).indices.values())
    out["p_holm_study"], out["p_holm_regime"] = holm_planned(p), holm_planned(p, per_cell)
    out = _holm_family(out, family, pairing.several_fractions, primary)
    out["min_n_for_significance"] = [min_n_for_significance(alpha, int(m)) for m in out["family_size"]]
    out["underpowered"] = out["n_nonzero"] < out["min_n_for_significance"]
    out["significant"] = out["p_holm"] < alpha
    return out[COMPARISON_COLUMNS]


def _holm_family(out: pd.DataFrame, family: str, several: bool, primary: Cell | None) -> pd.DataFrame:
    """``out`` with the chosen family's ``holm_family``, ``family_size`` and headline ``p_holm``."""
    if family == "primary":
        if primary is None:
            raise AnalysisError("family 'primary' needs the declared primary cell (label fraction, regime)")
        is_primary = np.isclose(out[LABEL_FRACTION].astype(float), primary[0]) & (out["regime"] == primary[1])
        groups = [np.flatnonzero(is_primary), np.flatnonzero(~is_primary)]
        p = out["p_wilcoxon"].to_numpy(dtype=float)
        out["p_holm"] = holm_planned(p, [g for g in groups if g.size])
        out["holm_family"] = np.where(is_primary, "primary", "secondary")
        out["family_size"] = np.where(is_primary, groups[0].size, groups[1].size)
        return out
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
    return out


def _compare_one(
    regime: str, arm: str, col: str, a: np.ndarray, b: np.ndarray, dropped: np.ndarray, alpha: float
) -> dict[str, Any]:
    higher = orientation(col) > 0
    d = snap_ties(a - b, tie_tolerance(a, b))
    n = d.size
    p_w, n_eff, method = (
        signed_rank_pvalues(d[None, :], tol=0.0) if n else ([np.nan], [0], ["n/a (no pairs)"])
    )
    p_t, t_low, t_high = mean_t_ci(d, 1 - alpha)
    hl, hl_low, hl_high, hl_level, hl_method = hodges_lehmann_ci(d, 1 - alpha)
    return {
        "regime": regime,
        "arm": arm,
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


# ----------------------------------------------------------------------------------------------- across arms


def friedman(
    df: pd.DataFrame,
    metric: str,
    regime: str,
    alpha: float = 0.05,
    *,
    label_fraction: float | None = None,
    pairing: Pairing | None = None,
) -> dict[str, Any]:
    """Friedman test (Iman–Davenport F) over all arms in one regime (of ``label_fraction``: required when the
    table has several), mean ranks, and each arm against the baseline only (``stats.control_comparisons``,
    Holm over k - 1). ``pairing``: as in ``paired_matrix``; ``alpha`` is unused (kept for callers).

    Complete blocks only: a seed with any excluded/missing cell is dropped (listwise; ``dropped_seeds``).
    Rank 1 = best (``orientation``: lowest for lower-is-better metrics; highest without a direction); ties
    get average ranks.

    Returns a dict: ``label_fraction, regime, metric, arms``, ``n`` (blocks), ``k``, ``chi2, f_statistic,
    df1, df2, p`` (``stats.friedman_test``), ``mean_ranks`` (arm -> mean rank, also when not run), ``control``
    (the baseline, or None), ``vs_control`` (per other arm: ``arm, rank_diff`` = its mean rank - the
    control's (< 0: ranks better), ``z, p, p_holm``), ``dropped_seeds``. Not run (NaN, no ``vs_control``) for
    k < 3, n < ``stats.FRIEDMAN_MIN_BLOCKS`` or all arms tied on every seed (``sentences.friedman_note``).
    """
    pairing = check_pairing(df, metric) if pairing is None else pairing
    fraction = pairing._fraction(label_fraction)
    matrix, seeds, arms = paired_matrix(df, metric, regime, label_fraction=fraction, pairing=pairing)
    col = metric_column(metric, df.columns)
    complete = np.isfinite(matrix).all(axis=1)
    x = matrix[complete]
    n, k = x.shape
    res = friedman_test(x, orientation(col) > 0)
    ranks = res.pop("mean_ranks")
    control = pairing.baseline if pairing.baseline in arms else None
    result: dict[str, Any] = {
        LABEL_FRACTION: fraction,
        "regime": regime,
        "metric": col,
        "arms": arms,
        "n": int(n),
        "k": int(k),
        **res,
        "mean_ranks": {a: float(r) for a, r in zip(arms, ranks)} if ranks.size else {},
        "control": control,
        "vs_control": [],
        "dropped_seeds": [int(s) for s in seeds[~complete]],
    }
    if control is not None and np.isfinite(result["p"]):
        c = arms.index(control)
        post = zip(np.delete(ranks, c) - ranks[c], *control_comparisons(ranks, c, n))
        keys = ("rank_diff", "z", "p", "p_holm")
        others = [a for a in arms if a != control]
        result["vs_control"] = [{"arm": a, **dict(zip(keys, map(float, v)))} for a, v in zip(others, post)]
    return result
