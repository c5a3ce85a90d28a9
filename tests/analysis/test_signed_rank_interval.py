"""Issue 26, defect 3: the signed-rank test and its Hodges-Lehmann interval handle zeros and ties ONE way, so
a significant p never sits beside an interval that includes 0 (nor a non-significant one beside an interval
that excludes it, at the same level)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from study import stats as ST


def _excludes_zero(low: float, high: float) -> bool:
    return bool(low > 0 or high < 0)


def test_reproduction_significant_beside_an_interval_that_includes_zero():
    # AUC differences on a 0.01 grid with ties (the audit's case): the zero-dropping, mid-rank test gave
    # p = 0.039 beside the untied interval [0, 0.03].
    d = np.array([3, 3, 3, 1, 2, 2, 3, -2]) / 100
    p = ST.signed_rank_pvalues(d)[0][0]
    est, low, high, level, method = ST.hodges_lehmann_ci(d, 0.95)
    assert (p < 0.05) == _excludes_zero(low, high), (p, low, high)


def test_reproduction_with_zero_differences():
    d = np.array([-2, 1, -2, 0, 1, 0, 0, -2, -2, -2, -2]) / 100
    p = ST.signed_rank_pvalues(d)[0][0]
    _, low, high, _, _ = ST.hodges_lehmann_ci(d, 0.95)
    assert (p < 0.05) == _excludes_zero(low, high), (p, low, high)


def test_untied_data_keep_the_exact_wilcoxon():
    rng = np.random.default_rng(1)
    for n in (5, 8, 16, 60):
        d = rng.normal(0.3, 1.0, (25, n))
        p, n_eff, method = ST.signed_rank_pvalues(d)
        if n <= 50:
            np.testing.assert_allclose(p, stats.wilcoxon(d, method="exact", axis=1).pvalue)
        assert (n_eff == n).all() and set(method) == {"exact"}


def test_all_zero_differences_give_p_one_and_a_point_interval():
    p, n_eff, method = ST.signed_rank_pvalues(np.zeros((1, 8)))
    assert p[0] == 1 and n_eff[0] == 0 and "all differences zero" in method[0]
    est, low, high, _, _ = ST.hodges_lehmann_ci(np.zeros(8))
    assert est == low == high == 0


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(-4, 6), min_size=5, max_size=16),
    st.sampled_from([0.01, 0.05, 0.1, 0.2]),
)
def test_p_below_alpha_iff_the_interval_excludes_zero(cents, alpha):
    d = np.array(cents) / 100  # a 0.01 grid: ties and zeros are common
    p = ST.signed_rank_pvalues(d)[0][0]
    est, low, high, level, method = ST.hodges_lehmann_ci(d, 1 - alpha)
    if math.isnan(low):  # n too small for any finite interval at this level: nothing can be significant
        assert p >= alpha
        return
    assert (p < alpha) == _excludes_zero(low, high), (cents, alpha, p, low, high)
    assert low <= est <= high and level >= 1 - alpha


def test_batched_rows_of_mixed_sizes_equal_single_rows():
    rng = np.random.default_rng(4)
    d = rng.integers(-3, 5, (40, 12)) / 100
    d[rng.random(d.shape) < 0.15] = np.nan  # dropped pairs: rows of different n
    p, n_eff, method = ST.signed_rank_pvalues(d)
    for i in range(len(d)):
        pi, ni, mi = ST.signed_rank_pvalues(d[i][np.isfinite(d[i])])
        assert p[i] == pytest.approx(pi[0]) and n_eff[i] == ni[0] and method[i] == mi[0]


def test_tied_test_stays_valid_under_the_null():
    # Symmetric null differences on a 0.01 grid (many ties and zeros): the rejection rate stays <= alpha.
    rng = np.random.default_rng(7)
    for n in (6, 9, 13):
        d = (rng.integers(-3, 4, (20000, n)) + rng.integers(-3, 4, (20000, n))) / 100
        rate = np.mean(ST.signed_rank_pvalues(d)[0] < 0.05)
        assert rate <= 0.05, (n, rate)
