"""Looks at a study's primary comparisons as seeds accrue: group-sequential boundaries, the decision at each
look, and the correction for looks nobody planned (numbers and codes; the words are the report's).

**Planned looks** (`AnalysisPlan.looks`, seed counts n_1 < ... < n_K; n_K the most seeds the study runs). At
look k the information fraction is t_k = seeds / n_K. Each family of the verdicts (`study.verdicts`) is a
group-sequential test with Lan-DeMets O'Brien-Fleming-type alpha spending (`spent`): the superiority family
(two-sided Wilcoxon signed-rank p, alpha/2 spent on each side, as ldbounds, gsDesign and rpact do) and the
equivalence family (each one-sided test of the TOST at level alpha). The nominal level of look k
(`nominal_levels`) makes the probability of crossing at look k, and not before, under the canonical joint
normal of the statistics (independent increments, corr(Z_i, Z_j) = sqrt(t_i / t_j)) equal the alpha the
spending function adds at t_k (recursive numerical integration, Armitage, McPherson and Rowe 1969; Jennison
and Turnbull 2000, ch. 19).

Within a family, the m primary comparisons are a group-sequential Holm procedure (closed testing with
Bonferroni-weighted group-sequential tests: Maurer and Bretz 2013, Ye et al. 2013): at each look the open
comparisons' p-values are taken smallest first, and the i-th is rejected while it is below the look's
nominal level of a design at alpha / r, r = the hypotheses of this family not yet rejected (at this look or
before). A comparison decided better or worse is rejected in the superiority family (its share of alpha goes
to the others, as in Holm); in the equivalence family it stays, never tested again (and likewise an
equivalent comparison in the superiority family). That keeps the Holm family at the original m for
every hypothesis not rejected, which is what makes it valid: a hypothesis that stops being tested is a
non-binding stop, which can only lower the chance of a crossing. A decided comparison is closed: its arm
runs no further seeds. One look at t = 1 is the fixed design (`verdicts.verdict_codes` of the Holm p).

**Unplanned looks** (a study without declared looks, extended after the fact): Bonferroni across looks. At
K looks so far, every look j = 1..K is judged again by its own Holm at alpha / K (two-sided Wilcoxon and TOST
alike); a comparison's verdict is the one of the first look that decides it (equivalence first within a
look). A verdict of an earlier report can be withdrawn when K grows. For K fixed before the verdicts are
seen, the chance of any false claim is <= alpha (union bound over looks); `bench/looks_calibration.py`
measures it when the study is extended because it was undecided (STATISTICS.md, "Planned looks").

The normal boundaries are an approximation for a rank test and a t-test at a few seeds: the calibration by
simulation through the project's functions (`bench/looks_calibration.py`) is the check.

Shapes: m primary comparisons, K looks. Verdict codes are `study.verdicts.VERDICTS`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import optimize
from scipy import stats as sps

from study.stats import signed_rank_pvalues, snap_ties, tie_tolerance
from study.verdicts import VERDICTS, tost_paired

UNDECIDED = VERDICTS[3]
# Grid of the numerical integration: steps per SD of the narrowest normal in the recursion (Simpson's rule;
# 24 steps give boundaries within 1e-6 of a grid four times as fine) and the reach of a one-sided region's
# unbounded side, in SDs.
GRID_STEPS_PER_SD = 24
TAIL_SDS = 9.0
MAX_Z = 40.0  # a boundary for an increment of alpha too small to compute: nothing crosses it


class LooksError(ValueError):
    """Looks or look data the rule cannot use; the message names what is wrong and the fix."""


def spent(t: np.ndarray | float, alpha: float, sides: int = 2) -> np.ndarray:
    """Alpha spent by information fraction `t` (any shape, in [0, 1]; above 1 counts as 1) by the Lan-DeMets
    O'Brien-Fleming-type function: one-sided (`sides=1`) 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)); two-sided
    (`sides=2`) that function at alpha/2 on each side, 4 - 4 Phi(z_{1-alpha/4} / sqrt(t)) in all.
    spent(1) = alpha."""
    if sides not in (1, 2):
        raise LooksError(f"sides must be 1 or 2, got {sides!r}")
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    a = alpha / sides
    with np.errstate(divide="ignore"):
        return sides * 2 * sps.norm.sf(sps.norm.isf(a / 2) / np.sqrt(t))


def information_fractions(seeds: Sequence[int], max_seeds: int) -> np.ndarray:
    """Seeds at each look (K,) over the planned maximum: the information fraction of each look, (K,)."""
    s = np.asarray(seeds, dtype=float)
    if s.ndim != 1 or s.size == 0 or max_seeds < 1:
        raise LooksError(f"need one seed count per look and a maximum >= 1; got {list(s)} of {max_seeds}")
    if np.any(s < 1) or np.any(np.diff(s) <= 0) or s[-1] > max_seeds:
        raise LooksError(
            f"seeds at the looks must increase from 1 to at most the planned maximum {max_seeds}; "
            f"got {list(s)}"
        )
    return s / max_seeds


def boundaries(fractions: Sequence[float], alpha: float, sides: int = 2) -> np.ndarray:
    """Critical z (K,) at looks with information fractions `fractions` (K,) (strictly increasing in (0, 1])
    such that, under the null, the chance of crossing first at look k is `spent(t_k) - spent(t_{k-1})`.
    Two-sided: |Z_k| >= c_k crosses; one-sided: Z_k >= c_k."""
    return np.array(_boundaries(tuple(float(t) for t in fractions), float(alpha), int(sides)))


def nominal_levels(fractions: Sequence[float], alpha: float, sides: int = 2) -> np.ndarray:
    """The p-value below which look k of `boundaries` crosses (K,): 2 Phi(-c_k) two-sided, Phi(-c_k)
    one-sided. One look at t = 1 gives alpha."""
    c = boundaries(fractions, alpha, sides)
    return sides * sps.norm.sf(c)


@lru_cache(maxsize=256)
def _boundaries(t: tuple[float, ...], alpha: float, sides: int) -> tuple[float, ...]:
    if not 0 < alpha < 1:
        raise LooksError(f"alpha must lie in (0, 1), got {alpha}")
    ts = np.asarray(t, dtype=float)
    if ts.size == 0 or ts[0] <= 0 or ts[-1] > 1 or np.any(np.diff(ts) <= 0):
        raise LooksError(f"information fractions must increase within (0, 1]; got {list(t)}")
    increments = np.diff(spent(ts, alpha, sides), prepend=0.0)
    steps = np.sqrt(np.diff(ts, prepend=0.0))  # SD of each increment of the score S_k = Z_k sqrt(t_k)
    # A look's grid resolves its own density (no narrower than its step) and the next step's kernel.
    spacing = np.minimum(steps, np.append(steps[1:], steps[-1])) / GRID_STEPS_PER_SD
    out: list[float] = []
    grid = mass = np.empty(0)
    for k, (t_k, step, inc) in enumerate(zip(ts, steps, increments)):
        if k == 0:
            c = MAX_Z if inc <= 0 else float(sps.norm.isf(inc / sides))
        else:
            c = _solve_boundary(grid, mass, step, math.sqrt(t_k), inc, sides)
        out.append(c)
        # Paths still running at look k, on the score scale; beyond TAIL_SDS SDs there is no mass to carry.
        reach = TAIL_SDS * math.sqrt(t_k)
        high = min(c * math.sqrt(t_k), reach)
        new_grid, weights = _simpson(max(-high, -reach) if sides == 2 else -reach, high, float(spacing[k]))
        if k == 0:
            density = sps.norm.pdf(new_grid, scale=math.sqrt(t_k))
        else:
            chunks = np.array_split(new_grid, max(1, new_grid.size * grid.size // 2**22))
            density = np.concatenate([sps.norm.pdf(x[:, None] - grid, scale=step) @ mass for x in chunks])
        grid, mass = new_grid, weights * density
    return tuple(out)


def _solve_boundary(
    grid: np.ndarray, mass: np.ndarray, step: float, sqrt_t: float, increment: float, sides: int
) -> float:
    """The z at which the paths still running (`mass` = weight x density on `grid`) cross with probability
    `increment` after an independent normal step of SD `step`."""

    def crossing(c: float) -> float:
        b = c * sqrt_t
        up = sps.norm.sf((b - grid) / step)
        down = sps.norm.cdf((-b - grid) / step) if sides == 2 else 0.0
        return float(mass @ (up + down)) - increment

    if increment <= 0 or crossing(MAX_Z) >= 0:
        return MAX_Z
    return float(optimize.brentq(crossing, -MAX_Z if sides == 1 else 0.0, MAX_Z, xtol=1e-10))


def _simpson(low: float, high: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """An odd number of points spanning [low, high] at spacing <= h, with Simpson's weights."""
    n = 2 * max(1, math.ceil((high - low) / (2 * h))) + 1
    grid = np.linspace(low, high, n)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return grid, w * (grid[1] - grid[0]) / 3


# ----------------------------------------------------------------------------------------- the decision


def holm_at_look(p: np.ndarray, open_: np.ndarray, rejected_before: int, levels: np.ndarray) -> np.ndarray:
    """One look of the group-sequential Holm procedure over a family of m hypotheses: which are rejected now.

    `p` (m,): this look's p-values; `open_` (m,) bool: still tested (a closed comparison is not; NaN p is
    never rejected); `rejected_before`: hypotheses of this family rejected at earlier looks; `levels` (m,):
    `levels[r - 1]` is this look's nominal level of a design at alpha / r. The open p-values are taken
    smallest first; each is rejected while it is below the level of r = m - rejected so far.
    Returns (m,) bool.
    """
    p = np.asarray(p, dtype=float)
    testable = np.asarray(open_, bool) & np.isfinite(p)
    out = np.zeros(p.size, bool)
    r = p.size - int(rejected_before)
    for i in np.argsort(np.where(testable, p, np.inf), kind="stable"):
        if not testable[i] or r < 1 or not p[i] < levels[r - 1]:
            break
        out[i] = True
        r -= 1
    return out


def decide_look(
    verdict: np.ndarray,
    p_wilcoxon: np.ndarray,
    favours_arm: np.ndarray,
    p_tost: np.ndarray,
    superiority_levels: np.ndarray,
    equivalence_levels: np.ndarray,
) -> np.ndarray:
    """The verdicts (m,) after one look, from those before it (`verdict` (m,) codes: "undecided"
    are open) and this look's two-sided Wilcoxon p, direction (True: the estimate favours the arm) and TOST p
    (each (m,); closed comparisons' entries are ignored). `superiority_levels` / `equivalence_levels` (m,):
    this look's nominal levels of designs at alpha / r, r = 1..m (`holm_at_look`). Equivalence takes
    precedence over better/worse within a look; a decided comparison keeps its verdict."""
    verdict = np.asarray(verdict, dtype=object)
    open_ = verdict == UNDECIDED
    sup = holm_at_look(
        p_wilcoxon, open_, int(np.isin(verdict, ("better", "worse")).sum()), superiority_levels
    )
    eq = holm_at_look(p_tost, open_, int((verdict == "equivalent").sum()), equivalence_levels)
    out = verdict.copy()
    out[sup] = np.where(np.asarray(favours_arm, bool)[sup], "better", "worse")
    out[eq] = "equivalent"
    return out


@dataclass(frozen=True)
class Sequential:
    """Verdicts of a study's primary comparisons over its looks (`sequential_verdicts`).

    Per comparison (m,): `verdict` (`VERDICTS` codes), `look` (1-based look at which it was reached; 0 while
    undecided), `open` (True: undecided and more seeds may decide it: the next look runs its arm).
    Per look (K,): `seeds`, `decided` (comparisons decided at that look), `alpha_spent` (cumulative alpha of
    the superiority family: what a false better/worse claim may have used by then) and
    `alpha_spent_equivalence` (each one-sided test of the TOST). `planned`: declared looks (else the
    unplanned correction); `exhausted`: planned, and the last declared look is reached."""

    verdict: np.ndarray
    look: np.ndarray
    open: np.ndarray
    seeds: np.ndarray
    decided: np.ndarray
    alpha_spent: np.ndarray
    alpha_spent_equivalence: np.ndarray
    planned: bool
    exhausted: bool


def sequential_verdicts(
    seeds: Sequence[int],
    p_wilcoxon: np.ndarray,
    favours_arm: np.ndarray,
    p_tost: np.ndarray,
    alpha: float,
    looks: Sequence[int] = (),
) -> Sequential:
    """The verdicts of m primary comparisons after K looks.

    `seeds` (K,): seeds analysed at each look so far (increasing); `p_wilcoxon`, `favours_arm`, `p_tost`
    (K, m): each look's two-sided Wilcoxon p, direction of the estimate (True: favours the arm) and TOST p, on
    the seeds each comparison had at that look (`look_tests`); NaN p: not tested at that look. `looks`: the
    declared looks (`AnalysisPlan.looks`); planned looks take `seeds` as the seeds reached (at most the last
    declared look; fewer than declared is a look at a smaller fraction), and each comparison's entries after
    its decision are ignored. Without declared looks, the unplanned correction (module docstring).
    """
    seeds = np.asarray(seeds, dtype=int)
    p_w, fav, p_t = (np.atleast_2d(np.asarray(x)) for x in (p_wilcoxon, favours_arm, p_tost))
    if not (p_w.shape == fav.shape == p_t.shape) or p_w.shape[0] != seeds.size:
        raise LooksError(
            f"need one row of p-values per look: {seeds.size} looks, "
            f"shapes {p_w.shape}, {fav.shape}, {p_t.shape}"
        )
    if len(looks):
        return _planned(seeds, p_w.astype(float), fav.astype(bool), p_t.astype(float), alpha, looks)
    return _unplanned(seeds, p_w.astype(float), fav.astype(bool), p_t.astype(float), alpha)


def _planned(
    seeds: np.ndarray, p_w: np.ndarray, fav: np.ndarray, p_t: np.ndarray, alpha: float, looks: Sequence[int]
) -> Sequential:
    t = information_fractions(seeds, int(looks[-1]))
    m = p_w.shape[1]
    sup = np.stack([nominal_levels(t, alpha / r, 2) for r in range(1, m + 1)], axis=1)  # (K, m)
    eq = np.stack([nominal_levels(t, alpha / r, 1) for r in range(1, m + 1)], axis=1)
    verdict = np.full(m, UNDECIDED, dtype=object)
    look = np.zeros(m, dtype=int)
    for k in range(seeds.size):
        new = decide_look(verdict, p_w[k], fav[k], p_t[k], sup[k], eq[k])
        look[(new != verdict)] = k + 1
        verdict = new
    exhausted = bool(seeds[-1] >= looks[-1])
    return _result(verdict, look, seeds, spent(t, alpha, 2), spent(t, alpha, 1), True, exhausted)


def _unplanned(
    seeds: np.ndarray, p_w: np.ndarray, fav: np.ndarray, p_t: np.ndarray, alpha: float
) -> Sequential:
    if np.any(seeds < 1) or np.any(np.diff(seeds) <= 0):
        raise LooksError(f"seeds at the looks must increase from 1; got {list(seeds)}")
    n_looks, m = p_w.shape
    level = np.full(m, alpha / n_looks) / np.arange(1, m + 1)  # Holm at alpha / K: r-th level alpha / (K r)
    verdict = np.full(m, UNDECIDED, dtype=object)
    look = np.zeros(m, dtype=int)
    for k in range(n_looks):
        # Each look is its own Holm family of m (union bound over looks): earlier rejections free nothing.
        new = decide_look(np.full(m, UNDECIDED, dtype=object), p_w[k], fav[k], p_t[k], level, level)
        first = (verdict == UNDECIDED) & (new != UNDECIDED)
        verdict[first], look[first] = new[first], k + 1
    steps = alpha * np.arange(1, n_looks + 1) / n_looks
    return _result(verdict, look, seeds, steps, steps, False, False)


def _result(
    verdict: np.ndarray,
    look: np.ndarray,
    seeds: np.ndarray,
    spent_sup: np.ndarray,
    spent_eq: np.ndarray,
    planned: bool,
    exhausted: bool,
) -> Sequential:
    decided = np.bincount(look, minlength=seeds.size + 1)[1:]
    undecided = verdict == UNDECIDED
    return Sequential(
        verdict=verdict,
        look=look,
        open=undecided & (not exhausted),
        seeds=seeds,
        decided=decided,
        alpha_spent=np.asarray(spent_sup, float),
        alpha_spent_equivalence=np.asarray(spent_eq, float),
        planned=planned,
        exhausted=exhausted,
    )


# ------------------------------------------------------------------------------------- tests at each look


def look_tests(
    d: np.ndarray, seeds: np.ndarray, margin: float, orientation: int = 1, tol: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The primary analysis' tests at each look from the per-seed differences.

    `d` (m, n): arm - baseline of each comparison on each seed in run order (NaN: a dropped pair); `seeds`
    (K,) or (K, m): the first seeds each comparison has at each look (a closed arm keeps its count);
    `margin`: delta in the metric's units; `orientation`: +1 higher is better, -1 lower (the direction of
    `favours_arm`). Differences are snapped as `analysis.compare_to_baseline` does (`snap_ties` with `tol`:
    `stats.tie_tolerance` of the metric values gives the analysis' own; the default, `tie_tolerance(d)`, is
    the same for metrics within [-1, 1]). Returns `(p_wilcoxon, favours_arm, p_tost)`, each (K, m): the
    two-sided signed-rank p (`stats.signed_rank_pvalues`), whether the Hodges-Lehmann estimate (the mean
    where it is undefined) favours the arm, and the paired TOST p (`verdicts.tost_paired`)."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    m, n = d.shape
    counts = np.broadcast_to(np.asarray(seeds, dtype=int).reshape(len(seeds), -1), (len(seeds), m))
    if np.any(counts < 1) or np.any(counts > n):
        raise LooksError(f"each look needs 1 to {n} seeds of the differences; got {counts.tolist()}")
    rows = np.where(np.arange(n)[None, None, :] < counts[:, :, None], d[None], np.nan).reshape(-1, n)
    rows = snap_ties(rows, tol=tie_tolerance(d) if tol is None else tol)
    p_w = signed_rank_pvalues(rows, tol=0.0)[0]
    n_fin = np.isfinite(rows).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (no pairs) give NaN, as they should
        mean = np.nanmean(rows, axis=1)
        sd = np.nanstd(rows, axis=1, ddof=1)
        i, j = np.triu_indices(n)
        hl = np.nanmedian((rows[:, i] + rows[:, j]) / 2, axis=1)
    favours = np.where(np.isfinite(hl), hl, mean) * orientation > 0
    p_t = tost_paired(mean, np.where(n_fin >= 2, sd, np.nan), n_fin, margin)[2]
    shape = (len(seeds), m)
    return p_w.reshape(shape), favours.reshape(shape), p_t.reshape(shape)
