"""Tests, intervals and effect sizes on paired differences: arrays in, numbers out (``study.analysis``
applies them to a study's results table; the design is in ``docs/STATS.md``).

* Differences are cleaned of floating-point noise before any rank, tie, zero or spread check
  (``snap_ties``: values within ``TIE_RTOL`` of each other are one value), so 0.86 - 0.84 and
  0.815 - 0.795 are a tie, as they are in exact arithmetic.
* Headline test: the two-sided Wilcoxon signed-rank test (``signed_rank_pvalues``) in Tukey's form (counts
  of Walsh averages below and above 0), with the exact untied null distribution: the exact Wilcoxon test
  without ties or zero differences, exact and conservative with them; differences that are all zero give
  p = 1. ``holm`` corrects a family of them (valid under any dependence).
* Intervals: the Hodges-Lehmann location with its exact signed-rank CI (``hodges_lehmann_ci``, Walsh
  averages: the inversion of the headline test, zeros and ties handled alike, so p < alpha exactly when the
  1 - alpha interval excludes 0) and the t-interval of the mean difference (``mean_t_ci``).
  The BCa bootstrap of the mean (``bootstrap_mean_diff_ci``) covered ~90 % at n = 8 in the project's
  simulation and is not reported.
* Effect sizes: Hedges' g_z, matched-pairs rank-biserial correlation, probability of improvement, all
  signed so that positive = arm better (also for lower-is-better metrics).

Shapes: a difference vector ``d`` is ``(n,)`` (one value per paired seed); batched functions take
``(n_tests, n_pairs)``. Bad arguments raise ``AnalysisError`` (a ``ValueError``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

# scipy's own limit for the exact signed-rank distribution (study.report.simulate's fast path)
EXACT_MAX_N = 50
WALSH_CHUNK = 2**22  # Walsh averages held at once by signed_rank_pvalues (rows x n(n+1)/2)


class AnalysisError(ValueError):
    """Input the analysis cannot use; the message names what is wrong and how to fix it."""


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
    scipy keeps its exact distribution private, and tests/analysis/test_analysis.py checks p-values agree with
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
    """Two-sided Wilcoxon signed-rank p-values for each row of ``diffs`` ``(n_tests, n_pairs)``: the test
    ``hodges_lehmann_ci`` inverts, so p < alpha exactly when the (1 - alpha) interval excludes 0.

    Differences are first snapped (``snap_ties`` with ``tol``, default ``tie_tolerance(diffs)``), so ties
    and zeros are those of the exact values. NaN cells are dropped pairs. The statistic is Tukey's form of
    W+: of the n(n+1)/2 Walsh averages (d_i + d_j)/2, i <= j, ``W- = #{<= 0}`` and ``W+ = #{>= 0}`` (a zero
    average counts on both sides); p = ``min(1, 2 min(P(W <= W-), P(W <= W+)))`` under the exact untied null
    of n differences. Without ties or zeros this is the exact Wilcoxon test (``scipy.stats.wilcoxon(method=
    "exact")``); with them it is exact and conservative (breaking every tie against the arm gives untied
    data with the same null distribution), zeros and ties handled as the interval handles them (the
    zero-dropping, mid-rank test gave "significant" beside its own interval that included 0). Vectorised
    over the rows of each n.

    Returns ``(p (n_tests,), n_eff (n_tests,) non-zero differences, method (n_tests,) str)``: p = 1 when every
    difference is zero (no evidence either way; the comparison still counts in its Holm family), NaN when a
    row has no finite difference.
    """
    diffs = snap_ties(np.atleast_2d(np.asarray(diffs, dtype=float)), tol)
    n_tests = diffs.shape[0]
    p = np.full(n_tests, np.nan)
    methods = np.full(n_tests, "n/a (no pairs)", dtype=object)
    finite = np.isfinite(diffs)
    n_fin, n_eff = finite.sum(axis=1), (finite & (diffs != 0)).sum(axis=1)
    for n in np.unique(n_fin[n_fin > 0]):
        every = np.flatnonzero(n_fin == n)
        for rows in np.array_split(every, -(-every.size * n * (n + 1) // 2 // WALSH_CHUNK)):
            p[rows], methods[rows] = _walsh_test(diffs[rows], finite[rows], int(n))
    all_zero = (n_eff == 0) & (n_fin > 0)
    p[all_zero] = 1.0
    methods[all_zero] = "all differences zero (p = 1)"
    return p, n_eff, methods


def _walsh_test(d: np.ndarray, finite: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``signed_rank_pvalues`` (p, method) for rows of snapped ``d`` with ``n`` finite values each."""
    x = np.sort(np.where(finite, d, np.inf), axis=1)[:, :n]  # the finite values of each row
    i, j = np.triu_indices(n)
    walsh = x[:, i] + x[:, j]  # twice the Walsh averages: the same signs
    below, above = (walsh <= 0).sum(axis=1), (walsh >= 0).sum(axis=1)
    cdf = _signed_rank_cdf(n)
    absx = np.sort(np.abs(x), axis=1)
    tied = (absx[:, 0] == 0) | np.any(absx[:, 1:] == absx[:, :-1], axis=1)
    method = np.where(tied, "exact, ties or zeros (conservative)", "exact").astype(object)
    return np.minimum(1.0, 2 * np.minimum(cdf[below], cdf[above])), method


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values along the last axis of ``pvalues`` ``(..., m)``; NaN entries are not tested.

    A 1-D family goes through ``statsmodels.stats.multitest.multipletests(method="holm")`` (its default
    method is not Holm). Batches of families (``ndim >= 2``, e.g. a (studies, m) simulation, or the report's
    regimes padded with NaN) use the same step-down rule vectorised in numpy, because ``multipletests``
    runs ``gc.collect()`` on every call (~50 ms). tests/analysis/test_analysis.py checks both paths agree.
    """
    p = np.atleast_1d(np.asarray(pvalues, dtype=float))
    if p.ndim == 1:
        out = np.full(p.shape, np.nan)
        ok = np.isfinite(p)
        if ok.any():
            out[ok] = multipletests(p[ok], method="holm")[1]
        return out
    return _holm_vectorised(p)


def holm_planned(p: np.ndarray, families: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Holm-adjusted ``p`` (m,) over all m planned comparisons, or within each of ``families`` (index arrays
    that partition 0..m-1). A comparison without a p (NaN: no pairs) counts in its family as p = 1 and
    keeps NaN. One batched ``holm`` call (its vectorised path: ``multipletests`` runs ``gc.collect()``)."""
    p = np.asarray(p, dtype=float)
    tested = np.isfinite(p)
    p_in = np.where(tested, p, 1.0)
    families = [np.arange(p.size)] if families is None else families
    padded = np.full((len(families), max(map(len, families))), np.nan)
    for g, idx in enumerate(families):
        padded[g, : len(idx)] = p_in[idx]
    adjusted = holm(padded)
    out = np.empty(p.size)
    for g, idx in enumerate(families):
        out[idx] = adjusted[g, : len(idx)]
    return np.where(tested, out, np.nan)


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
    ``[W_(k), W_(M+1-k)]`` of the sorted Walsh averages, k the largest integer with P(W+ <= k-1) <
    (1 - confidence)/2 under the exact untied null (``_signed_rank_cdf``). It is the set of shifts the
    two-sided test of ``signed_rank_pvalues`` does not reject, zeros and ties (after ``snap_ties``) handled
    the same way (kept in the Walsh averages), so it excludes 0 exactly when that test's uncorrected p is
    < 1 - confidence. With ties or zeros the achieved level is at least the stated one (labelled). Assumes
    differences symmetric about their centre (then centre = median = mean).

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
    # P(W+ <= k-1) < a/2, as signed_rank_pvalues' p < alpha (1e-12: 1 - (1 - alpha) is not alpha in floats)
    k = int(np.searchsorted(cdf, (1 - confidence) / 2 * (1 - 1e-12), side="right"))
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
    method = "exact signed-rank (Walsh averages)" + ("; ties or zeros: conservative" if has_ties else "")
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


FRIEDMAN_MIN_BLOCKS = 5  # complete seeds a Friedman test needs here (below, its p is not reported)


def friedman_test(x: np.ndarray, higher_better: bool = True) -> dict[str, Any]:
    """Friedman test over complete blocks ``x`` ``(n seeds, k arms)`` with the Iman–Davenport F.

    Returns ``mean_ranks`` ``(k,)`` (rank 1 = best: highest, lowest when not ``higher_better``; ties get
    average ranks; empty for n < 1 or k < 2), ``chi2`` (Friedman's statistic, tie-corrected, from
    ``scipy.stats.friedmanchisquare``), ``f_statistic`` = (n-1) chi2 / (n(k-1) - chi2) on ``df1`` = k-1 and
    ``df2`` = (k-1)(n-1) degrees of freedom and its ``p`` (Iman & Davenport 1980, the form Demšar 2006,
    JMLR 7, recommends over the conservative chi-square; inf and p = 0 when every seed ranks the arms
    alike). All NaN for k < 3, for n < ``FRIEDMAN_MIN_BLOCKS`` (on 2 blocks the chi-square p of a perfect
    4-arm concordance is 0.11 where the exact one is 1/4! = 0.042: the approximations do not hold, and so few
    blocks say little about a ranking) and when every arm ties on every seed (no ranking to test).
    """
    n, k = x.shape
    out: dict[str, Any] = {
        "mean_ranks": np.array([]),
        "chi2": np.nan,
        "f_statistic": np.nan,
        "df1": np.nan,
        "df2": np.nan,
        "p": np.nan,
    }
    if n >= 1 and k >= 2:
        out["mean_ranks"] = stats.rankdata(-x if higher_better else x, axis=1).mean(axis=0)
    if k < 3 or n < FRIEDMAN_MIN_BLOCKS or np.all(np.ptp(x, axis=1) == 0):
        return out
    chi2 = float(stats.friedmanchisquare(*x.T).statistic)
    df1, df2 = k - 1, (k - 1) * (n - 1)
    room = n * (k - 1) - chi2  # 0 when every seed ranks the arms alike (no ties): F is infinite
    f = math.inf if room <= 1e-12 * n * k else (n - 1) * chi2 / room
    p = 0.0 if math.isinf(f) else float(stats.f.sf(f, df1, df2))
    return out | {"chi2": chi2, "f_statistic": float(f), "df1": df1, "df2": df2, "p": p}


def control_comparisons(
    mean_ranks: np.ndarray, control: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each arm against the control (index ``control`` of ``mean_ranks`` (k,), over n complete blocks) from
    the Friedman mean ranks: ``z = (R_control - R_arm) / sqrt(k(k+1)/(6n))`` (> 0: the arm ranks better;
    rank 1 = best), two-sided normal ``p`` and Holm-adjusted ``p_holm`` over the k - 1 comparisons with the
    control (Demšar 2006, JMLR 7, section 3.2.2: comparisons with a control, Holm's step-down on these
    z-statistics; the Bonferroni–Dunn test is its single-step form). Arrays of the k - 1 other arms, in
    order; empty for k < 2 or n < 1."""
    ranks = np.asarray(mean_ranks, dtype=float)
    k = ranks.size
    if k < 2 or n < 1:
        return np.array([]), np.array([]), np.array([])
    others = np.delete(np.arange(k), control)
    z = (ranks[control] - ranks[others]) / math.sqrt(k * (k + 1) / (6 * n))
    p = 2 * stats.norm.sf(np.abs(z))
    return z, p, holm_planned(p)  # the vectorised Holm: `multipletests` runs gc.collect() per call
