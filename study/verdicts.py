"""The declared primary analysis: one verdict per primary comparison (numbers and codes; the words are the report's).

A study declares before it runs (`study.spec.presets.AnalysisPlan`) its metric, its primary cell (one
early-stopping regime, one label fraction) and an equivalence margin delta in the metric's units. The
primary family is every SSL arm against the baseline in that cell (m = SSL arms); each comparison gets exactly
one verdict (`VERDICTS`):

- `better` / `worse`: the two-sided Wilcoxon signed-rank p of the paired differences, Holm-adjusted over the
  m primary comparisons, is below alpha, and the Hodges-Lehmann estimate favours the arm / the baseline;
- `equivalent`: the paired two one-sided t-tests (TOST, Schuirmann 1987) reject both "difference <= -delta"
  and "difference >= +delta", Holm-adjusted over the same m comparisons; it takes precedence over
  `better`/`worse` (a detectable difference smaller than delta does not matter in practice);
- `undecided`: neither; `seeds_equivalence` and the superiority planning range (`study.report.simulate`)
  say how many seeds would decide it.

Beside the tests, the Bayesian signed-rank test with a region of practical equivalence +-delta (Benavoli et
al. 2017, through `baycomp`) gives P(arm better), P(practically equivalent), P(baseline better): a reading of
the same differences, not part of the verdict. Error control (by simulation, `bench/verdict_calibration.py`,
STATISTICS.md): under no true difference, a `better` or `worse` verdict in <= alpha of studies; under a true
difference of exactly +-delta, an `equivalent` verdict in <= alpha of studies.
"""

from __future__ import annotations

import math
from typing import Any

import baycomp
import numpy as np
import pandas as pd
from scipy import stats as sps

from study import analysis as A
from study.spec.presets import AnalysisPlan
from study.stats import holm_planned

VERDICTS = ("better", "worse", "equivalent", "undecided")
# Posterior samples of the Bayesian signed-rank test: Monte-Carlo error of each probability ~0.005.
BAYES_SAMPLES = 10_000
BAYES_SEED = 0
POWER = 0.8
MAX_SEEDS = 1000

VERDICT_COLUMNS = [
    "primary",
    "equivalence_margin",
    "p_tost_lower",
    "p_tost_upper",
    "p_tost",
    "p_tost_holm",
    "p_holm_primary",
    "p_bayes_better",
    "p_bayes_equivalent",
    "p_bayes_worse",
    "verdict",
    "seeds_equivalence",
]


def tost_paired(
    mean: np.ndarray, sd: np.ndarray, n: np.ndarray, margin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired TOST from the differences' mean, SD and count (arrays of one shape): the one-sided t-test p of
    H0 "mean <= -margin" (`p_lower`), of H0 "mean >= +margin" (`p_upper`), and the TOST p = max of the two.
    Equal to `statsmodels.stats.weightstats.ttost_paired` (tested), vectorised for simulations. NaN where
    n < 2; with SD 0 the p-values are 0 or 1 by the mean's side of each bound."""
    mean, sd, n = (np.asarray(x, dtype=float) for x in (mean, sd, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        se = sd / np.sqrt(n)
        df = np.where(n >= 2, n - 1, np.nan)
        p_lower = sps.t.sf((mean + margin) / se, df)
        p_upper = sps.t.cdf((mean - margin) / se, df)
    return p_lower, p_upper, np.maximum(p_lower, p_upper)


def seeds_for_equivalence(mean: float, sd: float, margin: float, alpha: float, power: float = POWER) -> float:
    """The fewest seeds with which the paired TOST at level `alpha` would reach `power`, if the differences'
    true mean and SD were `mean` and `sd` (normal approximation with t critical values). NaN when
    |mean| >= margin (equivalence is then not expected) or sd is not finite and positive; inf beyond MAX_SEEDS."""
    if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0) or abs(mean) >= margin:
        return math.nan
    for n in range(3, MAX_SEEDS + 1):
        se, crit = sd / math.sqrt(n), sps.t.ppf(1 - alpha, n - 1)
        reach = (
            sps.norm.cdf((margin - abs(mean)) / se - crit)
            + sps.norm.cdf((margin + abs(mean)) / se - crit)
            - 1
        )
        if reach >= power:
            return float(n)
    return math.inf


def bayes_signed_rank(
    baseline: np.ndarray, arm: np.ndarray, margin: float, higher_better: bool
) -> tuple[float, float, float]:
    """(P(arm better), P(practically equivalent), P(baseline better)) of the Bayesian signed-rank test with a
    region of practical equivalence +-`margin` on the paired scores `baseline`, `arm` (n,) (baycomp; seeded,
    so a report is reproducible). NaN without at least 2 pairs."""
    if len(arm) < 2:
        return math.nan, math.nan, math.nan
    left, rope, right = baycomp.SignedRankTest.probs(
        np.asarray(baseline, float), np.asarray(arm, float), rope=margin, nsamples=BAYES_SAMPLES,
        random_state=BAYES_SEED,
    )  # fmt: skip
    # baycomp's right = P(arm - baseline > margin); for a lower-is-better metric that favours the baseline.
    better, worse = (right, left) if higher_better else (left, right)
    return float(better), float(rope), float(worse)


def verdict_codes(
    p_holm: np.ndarray, favours_arm: np.ndarray, p_tost_holm: np.ndarray, alpha: float
) -> np.ndarray:
    """One verdict per comparison from its primary-family Holm p (superiority), the direction of its estimate
    (True: favours the arm) and its Holm-adjusted TOST p; arrays of one shape in, `VERDICTS` codes out."""
    significant = np.asarray(p_holm, float) < alpha
    out = np.where(significant, np.where(favours_arm, "better", "worse"), "undecided")
    return np.where(np.asarray(p_tost_holm, float) < alpha, "equivalent", out).astype(object)


def primary_mask(comp: pd.DataFrame, plan: AnalysisPlan) -> np.ndarray:
    """Which rows of a comparisons table are the declared primary comparisons."""
    regime = comp["regime"] == plan.primary_regime
    fraction = np.isclose(comp[A.LABEL_FRACTION].astype(float), float(plan.primary_fraction or 1.0))
    return (regime & fraction).to_numpy()


def decide(
    df: pd.DataFrame, comp: pd.DataFrame, plan: AnalysisPlan, pairing: A.Pairing, *, bayes: bool = True
) -> pd.DataFrame:
    """`comp` (`analysis.compare_to_baseline` of `df` on `plan.metric`) with `VERDICT_COLUMNS` added: the
    primary comparisons get their TOST, Bayesian probabilities and verdict; the others (secondary,
    exploratory) get NaN there and `primary` False. `bayes=False` leaves the Bayesian probabilities NaN (they
    are not part of the verdict; simulations of the verdicts skip their sampling)."""
    out = comp.copy()
    mask = primary_mask(out, plan)
    out["primary"] = mask
    out["equivalence_margin"] = plan.equivalence_margin
    for col in VERDICT_COLUMNS[2:]:
        out[col] = np.nan
    out["verdict"] = out["verdict"].astype(object)
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return out
    prim = out.iloc[rows]
    lower, upper, p_tost = tost_paired(prim["mean_diff"], prim["sd_diff"], prim["n"], plan.equivalence_margin)
    p_tost_holm = holm_planned(p_tost)
    p_holm = holm_planned(prim["p_wilcoxon"].to_numpy(dtype=float))
    higher = A.orientation(pairing.metric) > 0  # the caller gives a metric with a direction
    favours = np.asarray(A.arm_better(prim["hl_estimate"], prim["mean_diff"], pairing.metric))
    bayes = [_bayes_row(df, pairing, r, plan, higher) if bayes else (np.nan,) * 3 for _, r in prim.iterrows()]
    values = {
        "p_tost_lower": lower,
        "p_tost_upper": upper,
        "p_tost": p_tost,
        "p_tost_holm": p_tost_holm,
        "p_holm_primary": p_holm,
        "p_bayes_better": [b[0] for b in bayes],
        "p_bayes_equivalent": [b[1] for b in bayes],
        "p_bayes_worse": [b[2] for b in bayes],
        "verdict": verdict_codes(p_holm, favours, p_tost_holm, plan.alpha),
        "seeds_equivalence": [
            seeds_for_equivalence(m, s, plan.equivalence_margin, plan.alpha / len(rows))
            for m, s in zip(prim["mean_diff"], prim["sd_diff"])
        ],
    }
    for col, v in values.items():
        out.iloc[rows, out.columns.get_loc(col)] = np.asarray(v, dtype=object if col == "verdict" else float)
    return out


def _bayes_row(df: pd.DataFrame, pairing: A.Pairing, row: Any, plan: AnalysisPlan, higher: bool) -> tuple:
    matrix, _, arms = A.paired_matrix(
        df, pairing.metric, row["regime"], label_fraction=row[A.LABEL_FRACTION], pairing=pairing
    )
    base, arm = matrix[:, 0], matrix[:, list(arms).index(row["arm"])]
    keep = np.isfinite(base) & np.isfinite(arm)
    return bayes_signed_rank(base[keep], arm[keep], plan.equivalence_margin, higher)
