"""Simulations of the headline procedure (two-sided Wilcoxon signed-rank, Holm-corrected): the study-wise
false-positive rate a Holm family implies, and the power and seeds it needs. Pure numpy, seeded, cached.

Model (one regime): the baseline and each SSL arm get independent normal noise per seed, so the m
differences of a regime share the baseline's noise (correlation 0.5), as in the study; a seed effect shared
by all arms cancels in the differences and is left out. Differences are scaled to SD 1, so an effect is
Cohen's d_z (mean difference / SD of the differences). Regimes are independent: an upper bound on the
study-wise rate when regimes share stop epochs (they are replays of one run).

``simulated_results`` writes such studies as results tables, for tests and ``bench/null_studies.py`` to
run through the project's own entry point (``analysis.compare_to_baseline``).

Cost: the seeds-needed table of one family size takes 1-4 s (30 seed counts x 2,000 studies) and every
report needs one, so besides the in-process caches the results of ``_seeds_table`` and
``null_rejection_rates`` are kept on disk (``disk_cache_dir``: ``$STUDY_CACHE_DIR/simulate``, else
``~/.cache/melanoma-ssl-study/simulate``), keyed by every input and ``SIM_VERSION``. The simulations are
seeded, so a cached value is the value a fresh run computes; ``STUDY_SIM_CACHE=0`` turns the disk cache off.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from statsmodels.stats.proportion import proportion_confint

from study.analysis import BASELINE, CLASSIFICATION_METRICS
from study.stats import (
    EXACT_MAX_N,
    holm,
    min_n_for_significance,
    signed_rank_exact_p,
    signed_rank_pvalues,
)
from study.tasks import registry

SEEDS_MAX = 40  # planning search limit: "> 40 seeds" is beyond any study this tool runs
EFFECT_GRID = np.round(np.arange(0.2, 3.0001, 0.05), 2)  # d_z values the power tables are computed at
N_SIM = 2000  # simulated studies per (n, m, alpha): power SE <= 1.1 %, seeds needed +-1 near the threshold
# Null studies behind a stated study-wise rate: its 95 % Monte-Carlo interval is +-0.25 pp at 3 %, +-0.4 pp at
# 10 % (``mc_interval``); ~0.7 s once for a 6-arm x 3-regime x 3-fraction design, then cached on disk.
N_SIM_NULL = 20000
# Part of every disk-cache key: bump it when a change alters what a simulation returns.
SIM_VERSION = 1


def disk_cache_dir() -> Path:
    """Where simulation results are kept between processes (as ``study.data.default_cache_dir``, which is
    not imported here: it pulls in the image stack)."""
    env = os.environ.get("STUDY_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "melanoma-ssl-study") / "simulate"


def _disk_cached(name: str, key: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON-able result, read from / written to ``disk_cache_dir()`` under ``name`` and
    ``key`` (with ``SIM_VERSION``, ``N_SIM``, ``SEEDS_MAX`` and ``EFFECT_GRID``). Any file problem falls back
    to computing: the cache only saves time."""
    if os.environ.get("STUDY_SIM_CACHE", "1") == "0":
        return compute()
    full = {
        **key,
        "version": SIM_VERSION,
        "n_sim_default": N_SIM,
        "seeds_max": SEEDS_MAX,
        "grid": EFFECT_GRID.tolist(),
    }
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
    path = disk_cache_dir() / f"{name}-{digest}.json"
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == full:
            return stored["value"]
    except (OSError, ValueError, AttributeError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed: concurrent reports never read half a file.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump({"key": full, "value": value}, f)
        os.replace(f.name, path)
    except OSError:
        pass
    return value


def _null_diffs(rng: np.random.Generator, n_sim: int, m: int, n: int) -> np.ndarray:
    """``(n_sim, m, n)`` null differences of m arms vs one shared baseline, SD 1 each (correlation 0.5)."""
    e = rng.standard_normal((n_sim, m + 1, n))
    return (e[:, 1:] - e[:, :1]) / math.sqrt(2)


def _wplus(d: np.ndarray) -> np.ndarray:
    """W+ (sum of the ranks of |d| of the positive entries) along the last axis of continuous (untied,
    non-zero) ``d`` (..., n): one sort, the signs in rank order dotted with the ranks 1..n."""
    order = np.argsort(np.abs(d), axis=-1)
    positive = np.take_along_axis(d > 0, order, axis=-1)
    return positive @ np.arange(1, d.shape[-1] + 1)


def _wplus_p(d: np.ndarray) -> np.ndarray:
    """Exact two-sided signed-rank p along the last axis of continuous (untied, non-zero) ``d`` (..., n)."""
    return signed_rank_exact_p(_wplus(d), d.shape[-1])


@lru_cache(maxsize=64)
def null_rejection_rates(
    n: int, n_arms: int, n_regimes: int, alpha: float = 0.05, n_sim: int = N_SIM_NULL, seed: int = 0
) -> dict[str, float]:
    """False-positive rates of the headline procedure in null studies of ``n_regimes`` x ``n_arms``
    comparisons at ``n`` seeds, through the exact signed-rank distribution and ``study.stats.holm``.
    ``n_regimes``: independent families (a study of several label fractions passes regimes x fractions).

    Keys: ``per_comparison`` (uncorrected p < alpha), ``familywise_regime`` (any Holm-per-regime rejection
    within one regime), ``studywise_regime`` (any rejection in the study, Holm per regime),
    ``studywise_study`` (any rejection, Holm over all comparisons), ``n_sim``. Cached on disk.
    """
    key = {"n": n, "n_arms": n_arms, "n_regimes": n_regimes, "alpha": alpha, "n_sim": n_sim, "seed": seed}
    return _disk_cached("null", key, lambda: _null_rejection_rates(n, n_arms, n_regimes, alpha, n_sim, seed))


def _null_rejection_rates(
    n: int, n_arms: int, n_regimes: int, alpha: float, n_sim: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng([seed, n, n_arms, n_regimes])
    d = _null_diffs(rng, n_sim * n_regimes, n_arms, n).reshape(-1, n)  # (studies * regimes * arms, n)
    # Continuous differences have no ties or zeros (with probability 1): the exact test from W+ directly is
    # what study.stats.signed_rank_pvalues returns for them (tests check it), ~10x faster; beyond its exact
    # range that function's normal approximation is kept.
    p = _wplus_p(d) if n <= EXACT_MAX_N else signed_rank_pvalues(d)[0]
    p = p.reshape(n_sim, n_regimes, n_arms)
    per_regime = holm(p) < alpha
    whole = holm(p.reshape(n_sim, -1)) < alpha
    return {
        "per_comparison": float(np.mean(p < alpha)),
        "familywise_regime": float(per_regime.any(axis=2).mean()),
        "studywise_regime": float(per_regime.any(axis=(1, 2)).mean()),
        "studywise_study": float(whole.any(axis=1).mean()),
        "n_sim": n_sim,
    }


def mc_interval(rate: float, n_sim: int, confidence: float = 0.95) -> tuple[float, float]:
    """Monte-Carlo (Wilson) ``confidence`` interval of a rate simulated from ``n_sim`` studies
    (``statsmodels.stats.proportion.proportion_confint``); NaN for an undefined rate."""
    if not (np.isfinite(rate) and n_sim > 0):
        return np.nan, np.nan
    low, high = proportion_confint(round(rate * n_sim), n_sim, alpha=1 - confidence, method="wilson")
    return float(low), float(high)


@lru_cache(maxsize=128)
def _target_wplus(n: int, n_sim: int = N_SIM, seed: int = 0) -> np.ndarray:
    """W+ ``(len(EFFECT_GRID), n_sim)`` of the target comparison's n differences shifted by each grid
    effect, with its baseline noise ``(n_sim, n)`` (shared with the other arms); cached across m and alpha.

    W+ of d + effect is the number of Walsh averages of d above -effect (Tukey), so one sort per simulated
    study serves every effect."""
    rng = np.random.default_rng([seed, n])
    e = rng.standard_normal((2, n_sim, n))
    d = (e[1] - e[0]) / math.sqrt(2)
    i, j = np.triu_indices(n)
    walsh = np.sort((d[:, i] + d[:, j]) / 2, axis=1)  # (n_sim, M)
    span = 2 * (np.abs(walsh).max() + EFFECT_GRID.max() + 1)
    rows = np.arange(n_sim)[:, None] * span  # one searchsorted over all rows: offset each row by `span`
    queries = rows - EFFECT_GRID[None, :]  # (n_sim, effects)
    below = np.searchsorted((walsh + rows).ravel(), queries.ravel(), side="right").reshape(queries.shape)
    w = walsh.shape[1] - (below - np.arange(n_sim)[:, None] * walsh.shape[1])
    return w.T.copy(), e[0]


@lru_cache(maxsize=512)
def _power_curve(n: int, m: int, alpha: float, n_sim: int = N_SIM, seed: int = 0) -> np.ndarray:
    """Power ``(len(EFFECT_GRID),)`` of the Holm-corrected (over m) exact Wilcoxon for one comparison with
    true d_z = each grid effect, the other m - 1 null and sharing its baseline. Common random numbers."""
    w, e0 = _target_wplus(n, n_sim, seed)
    p_target = signed_rank_exact_p(w, n)  # (effects, n_sim)
    rng = np.random.default_rng([seed, n, m])
    others = (rng.standard_normal((n_sim, m - 1, n)) - e0[:, None, :]) / math.sqrt(2)
    o = np.sort(_wplus_p(others), axis=1)  # (n_sim, m - 1)
    # Holm rejects the target iff every smaller p before it passed its step and (m - r) p_target < alpha,
    # r = number of other p below the target's.
    steps_ok = np.concatenate(
        [np.ones((n_sim, 1), bool), np.cumprod((m - np.arange(m - 1)) * o < alpha, axis=1).astype(bool)],
        axis=1,
    )
    r = (o[None, :, :] < p_target[:, :, None]).sum(axis=2)  # (effects, n_sim)
    reject = np.take_along_axis(steps_ok[None].repeat(len(EFFECT_GRID), 0), r[:, :, None], 2)[:, :, 0]
    return np.mean(reject & ((m - r) * p_target < alpha), axis=1)


def headline_power(n: int, m: int, effect: float, alpha: float = 0.05) -> float:
    """Simulated power of the headline procedure at ``n`` seeds, family size ``m``, true d_z ``effect``
    (snapped down to ``EFFECT_GRID``; 0 below its first value)."""
    i = np.searchsorted(EFFECT_GRID, abs(effect) + 1e-9, side="right") - 1
    if i < 0 or n < 1:
        return 0.0
    return float(_power_curve(int(n), int(m), float(alpha))[i])


@lru_cache(maxsize=64)
def _seeds_table(m: int, alpha: float, power: float) -> np.ndarray:
    """Smallest n (<= SEEDS_MAX; inf beyond) with ``power`` at each ``EFFECT_GRID`` effect. Cached on disk
    (1-4 s to compute; every report needs the table of its family size)."""
    key = {"m": m, "alpha": alpha, "power": power}
    return np.asarray(
        _disk_cached("seeds", key, lambda: _compute_seeds_table(m, alpha, power).tolist()), float
    )


def _compute_seeds_table(m: int, alpha: float, power: float) -> np.ndarray:
    need = np.full(EFFECT_GRID.size, np.inf)
    for n in range(min_n_for_significance(alpha, m), SEEDS_MAX + 1):
        ok = (_power_curve(n, m, alpha) >= power) & ~np.isfinite(need)
        need[ok] = n
        if np.isfinite(need).all():
            break
    # Power rises with the effect: a larger effect never needs more seeds (removes simulation jitter).
    return np.minimum.accumulate(need)


def seeds_for_headline_power(effect: float, m: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Seeds the headline procedure (Holm over ``m``, two-sided exact Wilcoxon at ``alpha``) needs for
    ``power`` at true d_z ``effect``; the effect is snapped *down* to ``EFFECT_GRID`` (conservative).
    ``inf``: more than ``SEEDS_MAX`` (or no effect); NaN for an undefined effect."""
    if not np.isfinite(effect):
        return np.nan
    i = np.searchsorted(EFFECT_GRID, abs(effect) + 1e-9, side="right") - 1
    if i < 0:
        return math.inf
    return float(_seeds_table(int(m), float(alpha), float(power))[i])


def dz_undefined(mean: float, sd: float, n: int) -> str:
    """Why the d_z interval of n differences with this mean and SD is undefined; "" when it is defined."""
    if n < 3:
        return f"fewer than 3 paired seeds: n = {n}"
    if not (np.isfinite(mean) and np.isfinite(sd)):
        return "no finite mean or SD of the differences"
    if sd <= 0:
        return "no spread in the differences (d_z undefined)"
    return ""


NCT_FAILED = "the noncentral-t inversion failed numerically (scipy's nct.cdf returned NaN)"


def dz_interval(mean: float, sd: float, n: int, confidence: float = 0.8) -> tuple[float, float]:
    """Confidence interval of the true d_z from an observed mean and SD of n differences, by inverting the
    noncentral t (``scipy.stats.nct``). NaN when undefined (``dz_undefined``) and when the inversion fails
    (``NCT_FAILED``: scipy's ``nct.cdf`` returns NaN in its saturated tails for some inputs, e.g. t = 4.09,
    df = 8, nc = -5.9). The root is bracketed by steps out from the observed t that start at 1 and double,
    and halve on a NaN, so the bracket stays near the root, where the cdf is finite."""
    if dz_undefined(mean, sd, n):
        return np.nan, np.nan
    t_obs, df = mean / sd * math.sqrt(n), n - 1
    q = (1 - confidence) / 2

    def solve(target: float) -> float:
        f = lambda nc: float(stats.nct.cdf(t_obs, df, nc)) - target  # noqa: E731 (decreasing in nc)
        lo, hi = _bracket_end(f, t_obs, -1.0), _bracket_end(f, t_obs, 1.0)
        if lo is None or hi is None:
            return np.nan
        try:
            return optimize.brentq(f, lo, hi, xtol=1e-6)
        except (ValueError, RuntimeError):  # a NaN inside the bracket, or no convergence
            return np.nan

    return solve(1 - q) / math.sqrt(n), solve(q) / math.sqrt(n)


def _bracket_end(f: Callable[[float], float], start: float, direction: float) -> float | None:
    """A point in ``direction`` from ``start`` where decreasing ``f`` is >= 0 (going down) or <= 0 (going up),
    reached by steps that double and halve on a NaN; None when there is none (NaN or no sign change)."""
    x, step = start, 1.0
    for _ in range(200):
        v = f(x + direction * step)
        if np.isnan(v):
            step /= 2
            if step < 1e-3:
                return None
            continue
        x += direction * step
        if (v >= 0) if direction < 0 else (v <= 0):
            return x
        step *= 2
    return None


PLANNING_COLUMNS = ["dz_ci80_low", "dz_ci80_high", "seeds_80_min", "seeds_80_max", "planning_note"]


def power_planning(comp: pd.DataFrame, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Per comparison row of ``analysis.compare_to_baseline``: the 80 % CI of the true d_z
    (``dz_ci80_low/high``, arm - baseline direction) and the seeds the headline procedure at the row's
    family size would need for ``power`` if the true effect lay at its more favourable end
    (``seeds_80_min``) or its less favourable end (``seeds_80_max``; inf when the CI reaches 0 or more than
    ``SEEDS_MAX`` are needed). A planning range, not a point: at n = 8 the observed effect is noisy.
    ``planning_note``: why the range is NaN (``dz_undefined`` or ``NCT_FAILED``), else "".
    Same index as ``comp``."""
    rows = []
    for r in comp.itertuples(index=False):
        lo, hi = dz_interval(r.mean_diff, r.sd_diff, int(r.n))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            why = dz_undefined(r.mean_diff, r.sd_diff, int(r.n)) or NCT_FAILED
            rows.append(dict.fromkeys(PLANNING_COLUMNS[:-1], np.nan) | {"planning_note": why})
            continue
        far, near = max(abs(lo), abs(hi)), (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)))
        m = int(r.family_size)
        rows.append(
            {
                "dz_ci80_low": lo,
                "dz_ci80_high": hi,
                "seeds_80_min": seeds_for_headline_power(far, m, alpha, power),
                "seeds_80_max": seeds_for_headline_power(near, m, alpha, power),
                "planning_note": "",
            }
        )
    return pd.DataFrame(rows, columns=PLANNING_COLUMNS, index=comp.index)


# ------------------------------------------------------------------------------------ simulated studies

# The paper's design: the baseline and the tasks the paper ran (`PretextTask.paper_table1`), in registry order.
SIM_ARMS = (BASELINE, *(t.name for t in registry.TASKS.values() if t.paper_table1))
SIM_REGIMES = {"none": 0, "patience3": 3, "patience10": 10}


def simulated_results(
    rng: np.random.Generator,
    n_seeds: int = 8,
    effects: Mapping[str, float] | None = None,
    seed_sd: float = 0.05,
    noise_sd: float = 0.02,
    grid: float | None = None,
    arms: Sequence[str] = SIM_ARMS,
    regimes: Mapping[str, int] | None = None,
    metric: str = "test_auc",
    base: float = 0.80,
) -> pd.DataFrame:
    """A tidy results table (``results_table.tidy_results``'s output shape, status ok) of one simulated study.

    ``metric`` value of (arm, seed, regime) = ``base + seed effect (SD seed_sd, shared by a seed's arms)
    + effects[arm] + noise (SD noise_sd)``, independent across regimes, rounded to multiples of ``grid``
    when given (an accuracy on 200 test images: ``grid=1/200``) and clipped to [0, 1]. Other metric columns
    copy it. The true difference of an arm with effect e has mean e and SD ``noise_sd * sqrt(2)``.
    """
    effects = dict(effects or {})
    regimes = dict(regimes or SIM_REGIMES)
    n_arms, n_reg = len(arms), len(regimes)
    seed_effect = rng.normal(0, seed_sd, (1, n_seeds, 1))
    shift = np.array([effects.get(a, 0.0) for a in arms])[None, None, :]
    x = base + seed_effect + shift + rng.normal(0, noise_sd, (n_reg, n_seeds, n_arms))
    if grid:
        x = np.round(x / grid) * grid
    x = np.clip(x, 0.0, 1.0)
    reg = np.repeat(list(regimes), n_seeds * n_arms)
    seeds = np.tile(np.repeat(np.arange(n_seeds), n_arms), n_reg)
    arm = np.tile(np.asarray(arms, dtype=object), n_reg * n_seeds)
    df = pd.DataFrame(
        {
            "trial_id": [f"{a}_s{s}" for a, s in zip(arm, seeds)],
            "arm": arm,
            "task": ["none" if a == BASELINE else a for a in arm],
            "seed": seeds.astype(np.int64),
            "regime": reg,
            "patience": pd.array(np.repeat(list(regimes.values()), n_seeds * n_arms), dtype="Int64"),
            "status": "ok",
        }
    )
    values = x.reshape(-1)
    for col in {metric, *CLASSIFICATION_METRICS}:
        df[col] = values
    return df
