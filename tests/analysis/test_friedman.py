"""Friedman test across all arms (issue 26, defect 5): run only from 5 complete seeds up, with the
Iman–Davenport F, and post-hoc comparisons with the control (the baseline) only — no cliques, no "≈"."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_results
from scipy import stats

from study import analysis as A
from study import stats as ST
from study.report import results_table as R
from study.report import tables as T


def tidy(**kw) -> pd.DataFrame:
    return R.tidy_results(make_results(**kw))


def test_two_blocks_are_not_tested():
    """Two seeds ranking four arms the same way: chi-square p = 0.11, exact p = 1/4! = 0.042; neither is
    a test worth reporting on two blocks."""
    x = np.array([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    res = ST.friedman_test(x)
    assert math.isnan(res["p"]) and math.isnan(res["f_statistic"]) and math.isnan(res["chi2"])
    np.testing.assert_allclose(res["mean_ranks"], [1, 2, 3, 4])  # ranks are still descriptive
    df = tidy(
        n_seeds=4, effects={"rotation": 0.02, "missing_patch": 0.04, "corruption": 0.06}, noise_sd=0.001
    )
    out = T.friedman_result(df, "test_auc", "none", 0.05)
    assert math.isnan(out["p"]) and out["vs_control"] == []
    assert "at least 5 complete seeds" in out["note"] and "has 4" in out["note"]


def test_iman_davenport_f_and_its_p():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 4)) + np.array([0.0, 0.3, 0.6, 0.9])
    res = ST.friedman_test(x)
    n, k = x.shape
    chi2 = stats.friedmanchisquare(*x.T).statistic
    f = (n - 1) * chi2 / (n * (k - 1) - chi2)  # Iman & Davenport (1980); Demšar (2006) eq. 3.2
    assert res["chi2"] == pytest.approx(chi2)
    assert res["f_statistic"] == pytest.approx(f)
    assert (res["df1"], res["df2"]) == (k - 1, (k - 1) * (n - 1))
    assert res["p"] == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


def test_perfect_agreement_gives_p_zero_not_nan():
    x = np.tile(np.array([4.0, 3.0, 2.0, 1.0]), (6, 1))
    res = ST.friedman_test(x)
    assert res["f_statistic"] == math.inf and res["p"] == 0.0


def test_post_hoc_compares_each_arm_with_the_control_only():
    effects = {"rotation": 0.0, "missing_patch": 0.01, "corruption": 0.06}
    df = tidy(n_seeds=12, effects=effects, noise_sd=0.005)
    res = A.friedman(df, "test_auc", "none")
    assert res["control"] == "baseline" and res["n"] == 12 and res["k"] == 4
    assert not {"cliques", "cd", "q_alpha"} & set(res)
    post = pd.DataFrame(res["vs_control"])
    assert sorted(post["arm"]) == ["corruption", "missing_patch", "rotation"]
    ranks, n, k = res["mean_ranks"], 12, 4
    se = math.sqrt(k * (k + 1) / (6 * n))
    z = np.array([(ranks["baseline"] - ranks[a]) / se for a in post["arm"]])  # > 0: the arm ranks better
    np.testing.assert_allclose(post["z"], z)
    np.testing.assert_allclose(post["p"], 2 * stats.norm.sf(np.abs(z)))
    np.testing.assert_allclose(post["p_holm"], ST.holm(post["p"].to_numpy()))
    assert post.set_index("arm").loc["corruption", "p_holm"] < 0.05


def test_iman_davenport_and_control_comparisons_hold_their_level_on_null_blocks():
    rng = np.random.default_rng(0)
    n_sim, n, k = 1000, 6, 4
    reject, familywise = 0, 0
    for _ in range(n_sim):
        res = ST.friedman_test(rng.standard_normal((n, k)))
        reject += res["p"] < 0.05
        _, _, p_holm = ST.control_comparisons(res["mean_ranks"], 0, n)
        familywise += (p_holm < 0.05).any()
    # Iman–Davenport's F at n = 6 is close to its level (chi-square would give ~3.6 %); MC SE ~0.6 pp.
    assert 0.03 <= reject / n_sim <= 0.07, reject / n_sim
    assert familywise / n_sim <= 0.065, familywise / n_sim


def test_friedman_keys_are_numbers_only():
    res = A.friedman(tidy(n_seeds=6), "test_auc", "none")
    for key in ("chi2", "f_statistic", "df1", "df2", "p", "n", "k"):
        assert isinstance(res[key], (int, float)), key
    assert all(set(r) == {"arm", "rank_diff", "z", "p", "p_holm"} for r in res["vs_control"])
