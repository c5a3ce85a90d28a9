"""The primary analysis' verdicts (`study.verdicts`): TOST, the Bayesian reading, and one verdict each."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_results
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.weightstats import ttost_paired

from study import analysis as A
from study import verdicts as V
from study.spec.presets import AnalysisPlan


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-0.1, 0.1), min_size=3, max_size=20),
    st.floats(0.001, 0.1),
    st.integers(0, 2**31 - 1),
)
def test_tost_equals_statsmodels(diffs, margin, seed):
    d = np.asarray(diffs)
    if d.std(ddof=1) < 1e-6:
        return  # statsmodels divides by a zero SD
    base = np.random.default_rng(seed).uniform(0.6, 0.9, d.size)
    p_sm, lower, upper = ttost_paired(base + d, base, -margin, margin)
    ours = V.tost_paired(d.mean(), d.std(ddof=1), d.size, margin)
    assert ours[0] == pytest.approx(lower[1], rel=1e-6, abs=1e-12)
    assert ours[1] == pytest.approx(upper[1], rel=1e-6, abs=1e-12)
    assert ours[2] == pytest.approx(p_sm, rel=1e-6, abs=1e-12)


def test_verdict_codes_give_one_of_four_with_equivalence_first():
    p_holm = np.array([0.01, 0.01, 0.3, 0.01, 0.3])
    favours = np.array([True, False, True, True, False])
    p_tost = np.array([0.5, 0.5, 0.5, 0.01, 0.01])
    codes = V.verdict_codes(p_holm, favours, p_tost, 0.05)
    assert list(codes) == ["better", "worse", "undecided", "equivalent", "equivalent"]


def test_bayes_probabilities_sum_to_one_and_follow_the_direction():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.8, 0.85, 10)
    arm = base + 0.05 + rng.normal(0, 0.005, 10)
    better, equiv, worse = V.bayes_signed_rank(base, arm, 0.01, higher_better=True)
    assert better + equiv + worse == pytest.approx(1.0)
    assert better > 0.9
    # For a loss, the same numbers favour the baseline.
    assert V.bayes_signed_rank(base, arm, 0.01, higher_better=False)[2] == pytest.approx(better)
    assert all(math.isnan(x) for x in V.bayes_signed_rank(base[:1], arm[:1], 0.01, True))


def test_seeds_for_equivalence_shrinks_with_the_spread_and_is_nan_outside_the_margin():
    few = V.seeds_for_equivalence(0.0, 0.01, 0.02, 0.05)
    more = V.seeds_for_equivalence(0.0, 0.02, 0.02, 0.05)
    assert 3 <= few < more
    assert math.isnan(V.seeds_for_equivalence(0.03, 0.01, 0.02, 0.05))


def _decide(effects: dict[str, float], n_seeds: int, sd: float, margin: float = 0.02) -> pd.DataFrame:
    df = make_results(n_seeds=n_seeds, effects=effects, noise_sd=sd, rng_seed=3)
    plan = AnalysisPlan(primary_regime="patience3", primary_fraction=1.0, equivalence_margin=margin)
    pairing = A.check_pairing(df, "test_auc")
    comp = A.compare_to_baseline(df, "test_auc", family="primary", pairing=pairing, primary=(1.0, "patience3"))
    return V.decide(df, comp, plan, pairing)


def test_decide_reaches_each_verdict_on_data_whose_truth_is_known():
    out = _decide({"rotation": 0.10, "missing_patch": 0.0, "corruption": -0.10}, n_seeds=12, sd=0.002)
    prim = out[out["primary"]].set_index("arm")
    assert prim.loc["rotation", "verdict"] == "better"
    assert prim.loc["missing_patch", "verdict"] == "equivalent"
    assert prim.loc["corruption", "verdict"] == "worse"
    assert (out.loc[~out["primary"], "verdict"].isna()).all()  # secondary rows: no verdict
    assert set(prim["holm_family"]) == {"primary"} and (prim["family_size"] == 3).all()


def test_noisy_small_study_is_undecided_with_a_seed_estimate():
    out = _decide({"rotation": 0.0, "missing_patch": 0.0, "corruption": 0.0}, n_seeds=4, sd=0.05)
    prim = out[out["primary"]]
    assert (prim["verdict"] == "undecided").all()
    assert np.isfinite(prim["p_bayes_equivalent"]).all()
