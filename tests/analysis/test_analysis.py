"""Statistics on synthetic results tables whose truth is known (tests/support/fixtures_results.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fixtures_results import compare, make_results, tidy
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.power import TTestPower

from study import analysis as A
from study import stats as ST
from study.report import results_table as R
from study.report import sentences as SN
from study.report import simulate as S
from study.report import tables as T

pytestmark = pytest.mark.usefixtures("private_simulation_cache")



def test_analysis_returns_numbers_and_the_report_adds_the_words():
    df = tidy(n_seeds=5, effects={"rotation": 0.1})
    comp = A.compare_to_baseline(df)
    assert not {"headline", "warning", "arm_title", "regime_title"} & set(comp.columns)
    assert list(compare(df).columns) == [
        *comp.columns[:2],
        "regime_title",
        "arm",
        "arm_title",
        *comp.columns[3:-1],
        "warning",
        "significant",
        "headline",
    ]


# ------------------------------------------------------------------------------------------ detection power


def test_five_pp_shift_is_significant_after_holm_with_correct_sign():
    df = tidy(n_seeds=20, effects={"rotation": 0.0, "missing_patch": 0.0, "corruption": 0.05}, noise_sd=0.03)
    comp = compare(df, "test_auc")
    corr = comp[comp["arm"] == "corruption"]
    assert len(corr) == 3  # one per regime
    assert corr["significant"].all()
    for lo, hi in (("hl_ci_low", "hl_ci_high"), ("mean_ci_low", "mean_ci_high")):
        assert (corr[lo] > 0).all() and (corr[hi] > corr[lo]).all()
        # The true shift lies in every interval, and each estimate is within a few pp of it.
        assert ((corr[lo] < 0.05) & (corr[hi] > 0.05)).all()
    assert (corr["hl_estimate"].between(0.03, 0.07)).all()
    assert (corr["mean_diff"].between(0.03, 0.07)).all()
    assert (corr["hedges_gz"] > 0.5).all() and (corr["rank_biserial"] > 0.5).all()
    assert (corr["prob_improvement"] >= 0.7).all()  # true P(d > 0) = Phi(0.05 / 0.042) ~ 0.88
    assert (corr["p_holm"] >= corr["p_wilcoxon"]).all()
    assert all(
        "Corruption removal vs baseline" in h and "significant (arm better)" in h for h in corr["headline"]
    )
    # Default Holm family: every comparison of the study; the per-regime p is reported beside it.
    assert (comp["family_size"] == 9).all() and (comp["holm_family"] == "study").all()
    np.testing.assert_allclose(comp["p_holm"], comp["p_holm_study"])
    assert (comp["p_holm_regime"] <= comp["p_holm"] + 1e-12).all()


def test_negative_shift_has_negative_effect_sizes():
    df = tidy(n_seeds=20, effects={"rotation": -0.05}, noise_sd=0.02)
    comp = compare(df)
    assert (
        (comp["mean_diff"] < 0).all() and (comp["hl_ci_high"] < 0).all() and (comp["mean_ci_high"] < 0).all()
    )
    assert (comp["hedges_gz"] < 0).all() and (comp["rank_biserial"] < 0).all()
    assert (comp["prob_improvement"] < 0.25).all()
    assert comp["headline"].str.contains("arm worse").all()


def test_comparison_uses_the_same_signed_rank_and_holm_as_the_simulation():
    df = tidy(n_seeds=12, effects={"rotation": 0.01, "corruption": 0.02})
    comp = compare(df, family="regime")
    for regime, g in comp.groupby("regime"):
        m, _, arms = A.paired_matrix(df, "test_auc", regime)
        d = (m[:, 1:] - m[:, [0]]).T  # (n_arms - 1, n_seeds)
        p, _, _ = ST.signed_rank_pvalues(d)
        np.testing.assert_allclose(g.set_index("arm").loc[arms[1:], "p_wilcoxon"], p)
        np.testing.assert_allclose(g.set_index("arm").loc[arms[1:], "p_holm"], ST.holm(p))


# ----------------------------------------------------------------------------------- false-positive rate


# ------------------------------------------------------------------------------------------------ pairing


def test_unpaired_seed_raises_pairing_error_naming_arm_and_seed():
    raw = make_results(n_seeds=6)
    raw = raw[~((raw["arm"] == "missing_patch") & (raw["seed"] == 4))]
    with pytest.raises(A.PairingError, match=r"missing_patch.*seed\(s\) 4"):
        compare(R.tidy_results(raw))
    assert issubclass(A.PairingError, ValueError)


def test_extra_seed_on_an_arm_is_a_pairing_error():
    raw = make_results(n_seeds=6)
    raw = raw[~((raw["arm"] == "baseline") & (raw["seed"] == 2))]
    with pytest.raises(A.PairingError, match=r"baseline.*seed\(s\) 2"):
        A.check_pairing(R.tidy_results(raw))


def test_duplicate_trials_for_one_seed_are_a_pairing_error():
    raw = make_results(n_seeds=4)
    extra = raw[(raw["arm"] == "rotation") & (raw["seed"] == 1)].assign(trial_id="rotation_s1_again")
    with pytest.raises(A.PairingError, match=r"rotation.*2 trials for seed 1"):
        A.check_pairing(R.tidy_results(pd.concat([raw, extra])))


def test_diverged_trials_are_excluded_counted_and_dropped_pairwise():
    df = tidy(n_seeds=10, status={("rotation", 3): "diverged", ("baseline", 5): "error"})
    valid, excluded = R.split_valid(df)
    assert len(excluded) == 2 * 3  # two trials x three regimes
    assert set(excluded["reason"]) == {"diverged at epoch 7", "error: RuntimeError: out of memory"}
    summary = R.exclusion_summary(excluded)
    assert summary.set_index("arm")["n_trials"].to_dict() == {"baseline": 1, "rotation": 1}
    comp = compare(df).set_index(["regime", "arm"])
    assert (
        comp.loc[("none", "rotation"), "n"] == 8 and comp.loc[("none", "rotation"), "dropped_seeds"] == "3, 5"
    )
    assert (
        comp.loc[("none", "corruption"), "n"] == 9
        and comp.loc[("none", "corruption"), "dropped_seeds"] == "5"
    )
    assert "(2 excluded)" in comp.loc[("none", "rotation"), "headline"]
    notes = SN.dropped_notes(A.check_pairing(df))
    assert any("seed 5 dropped from every comparison" in n for n in notes)
    # The valid rows alone look unpaired; the error says to pass the full table.
    with pytest.raises(A.PairingError, match="pass the full table"):
        A.check_pairing(valid)
    fr = A.friedman(df, "auc", "none")
    assert fr["dropped_seeds"] == [3, 5] and fr["n"] == 8


def test_failed_trial_without_regime_is_expanded_to_every_regime():
    raw = make_results(n_seeds=4, status={("corruption", 2): "error"})
    failed = raw[(raw["arm"] == "corruption") & (raw["seed"] == 2)]
    one = failed.iloc[[0]].assign(regime=np.nan, patience=np.nan)
    raw = pd.concat([raw.drop(failed.index), one])
    df = R.tidy_results(raw)
    assert len(df[(df["arm"] == "corruption") & (df["seed"] == 2)]) == 3
    A.check_pairing(df)  # paired: the seed was run and excluded


# ------------------------------------------------------------------------------------------ small samples


def test_five_seeds_are_underpowered_with_minimum_n_in_warning():
    df = tidy(n_seeds=5, effects={"rotation": 0.1, "missing_patch": 0.1, "corruption": 0.1}, noise_sd=0.01)
    comp = compare(df, family="regime")
    assert comp["underpowered"].all() and not comp["significant"].any()
    assert (comp["min_n_for_significance"] == 7).all()
    assert comp["warning"].str.contains("at least 7 non-zero paired differences").all()
    assert comp["warning"].str.contains(r"2/2\^5 = 0.0625").all()
    assert comp["headline"].str.contains("underpowered").all()
    # Study family (the default; "table" is its old name): 9 comparisons -> 2/2^n <= 0.05/9 -> n >= 9.
    for family in ("study", "table"):
        study = compare(df, family=family)
        assert (study["min_n_for_significance"] == 9).all() and (study["holm_family"] == "study").all()
        np.testing.assert_allclose(study["p_holm"], study["p_holm_study"])


@given(alpha=st.sampled_from([0.01, 0.05, 0.1]), m=st.integers(1, 30))
def test_min_n_for_significance_is_the_smallest_attainable_n(alpha, m):
    n = ST.min_n_for_significance(alpha, m)
    assert 2 / 2**n <= alpha / m
    assert n == 1 or 2 / 2 ** (n - 1) > alpha / m


def test_min_n_known_values_and_bad_input():
    assert ST.min_n_for_significance(0.05, 3) == 7
    assert ST.min_n_for_significance(0.05, 1) == 6
    with pytest.raises(A.AnalysisError):
        ST.min_n_for_significance(0.05, 0)


def test_one_seed_and_baseline_only_do_not_crash():
    comp = compare(tidy(n_seeds=1))
    assert (comp["n"] == 1).all() and comp["p_wilcoxon"].notna().all()
    assert comp[["hl_ci_low", "mean_ci_low", "p_ttest", "hedges_gz"]].isna().all().all()
    assert comp["underpowered"].all()
    only_base = tidy(n_seeds=4, effects={})
    assert compare(only_base).empty
    assert math.isnan(A.friedman(only_base, "auc", "none")["p"])


# -------------------------------------------------------------------------------------------- effect sizes


def test_hedges_gz_and_rank_biserial_signs_and_magnitudes():
    d = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    n = d.size
    assert ST.hedges_gz(d) == pytest.approx(d.mean() / d.std(ddof=1) * (1 - 3 / (4 * (n - 1) - 1)))
    assert ST.hedges_gz(-d) == pytest.approx(-ST.hedges_gz(d))
    assert ST.rank_biserial(d) == 1.0 and ST.rank_biserial(-d) == -1.0
    assert ST.rank_biserial(np.array([1.0, -1.0, 2.0, -2.0])) == 0.0
    # Largest |d| negative, rest positive: (1+2+3 - 4) / 10.
    assert ST.rank_biserial(np.array([0.1, 0.2, 0.3, -0.4, 0.0])) == pytest.approx(0.2)
    big = np.random.default_rng(1).normal(0.5, 1.0, 4000)
    assert ST.hedges_gz(big) == pytest.approx(0.5, abs=0.05)
    assert math.isnan(ST.hedges_gz(d[:2]))


def test_prob_improvement_counts_ties_half_and_respects_direction():
    d = np.array([1.0, -1.0, 0.0, 2.0])
    assert ST.prob_improvement(d) == pytest.approx(2.5 / 4)
    assert ST.prob_improvement(d, higher_better=False) == pytest.approx(1.5 / 4)


def test_seeds_for_power_matches_statsmodels_and_edge_cases():
    n = ST.seeds_for_power(0.5, 0.05, 0.8)
    assert n == math.ceil(TTestPower().solve_power(effect_size=0.5, alpha=0.05, power=0.8))
    assert ST.seeds_for_power(0.0) == math.inf
    assert ST.seeds_for_power(50.0) == 2
    assert math.isnan(ST.seeds_for_power(math.inf))


def test_holm_is_explicit_holm_and_nan_aware():
    p = np.array([0.01, 0.04, 0.03, np.nan])
    # Holm by hand over the three finite p: sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.06 (monotone).
    np.testing.assert_allclose(ST.holm(p), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(ST.holm(np.array([[0.01, 0.02], [0.5, 0.01]])), [[0.02, 0.02], [0.5, 0.02]])


# ------------------------------------------------------------------------------------------- bootstrap CI


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 25),
    shift=st.floats(-0.1, 0.1),
    seed=st.integers(0, 10_000),
)
def test_bca_interval_contains_mean_difference(n, shift, seed):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.9, n)
    arm = base + shift + rng.normal(0, 0.02, n)
    low, high, method = ST.bootstrap_mean_diff_ci(arm, base, 0.95, 999, np.random.default_rng(0))
    mean = (arm - base).mean()
    assert low <= mean <= high
    assert method.startswith(("BCa", "percentile"))


def test_degenerate_differences_fall_back_and_say_so():
    base = np.linspace(0.7, 0.8, 6)
    low, high, method = ST.bootstrap_mean_diff_ci(base + 0.02, base, 0.95, 999, np.random.default_rng(0))
    assert low == pytest.approx(0.02) and high == pytest.approx(0.02)
    assert method.startswith("degenerate")


def test_comparison_is_reproducible():
    df = tidy(n_seeds=8, effects={"rotation": 0.02})
    # nothing in the comparison is random: two calls give the same frame
    pd.testing.assert_frame_equal(compare(df), compare(df))


# ----------------------------------------------------------------------------------------------- Friedman


def test_friedman_detects_a_clear_ranking():
    effects = {"rotation": 0.02, "missing_patch": 0.04, "corruption": 0.06}
    df = tidy(n_seeds=15, effects=effects, noise_sd=0.005)
    res = A.friedman(df, "test_auc", "none")
    assert res["p"] < 1e-6 and res["k"] == 4 and res["n"] == 15
    ranks = res["mean_ranks"]
    assert sorted(ranks, key=ranks.get) == ["corruption", "missing_patch", "rotation", "baseline"]
    # Each arm against the baseline only (tests/analysis/test_friedman.py): the best-ranked one differs.
    post = {c["arm"]: c for c in res["vs_control"]}
    assert set(post) == {"rotation", "missing_patch", "corruption"} and post["corruption"]["p_holm"] < 0.05


def test_friedman_with_two_arms_explains_why_it_is_not_run():
    res = T.friedman_result(tidy(n_seeds=5, effects={"rotation": 0.01}), "auc", "none", 0.05)
    assert math.isnan(res["p"]) and "at least 3 arms" in res["note"]
    assert set(res["mean_ranks"]) == {"baseline", "rotation"}


# ----------------------------------------------------------------------------------------- pretext tables


# ---------------------------------------------------------------------------------- loading and summaries


def test_summarise_matches_numpy_and_orders_arms():
    df = tidy(n_seeds=6, effects={"corruption": 0.05, "rotation": 0.0})
    s = T.summarise(df)
    assert list(s["arm"].unique()) == ["baseline", "rotation", "corruption"]
    row = s[(s["regime"] == "patience10") & (s["arm"] == "corruption") & (s["metric"] == "test_f1")].iloc[0]
    x = df[(df["regime"] == "patience10") & (df["arm"] == "corruption")]["test_f1"].to_numpy()
    assert (
        row["n"] == 6 and row["mean"] == pytest.approx(x.mean()) and row["sd"] == pytest.approx(x.std(ddof=1))
    )
    assert row["q1"] == pytest.approx(np.quantile(x, 0.25)) and row["median"] == pytest.approx(np.median(x))
    assert set(s["metric"]) == set(A.SUMMARY_METRICS)


def test_paired_matrix_shape_and_nan_for_excluded():
    df = tidy(n_seeds=5, status={("corruption", 4): "diverged"})
    m, seeds, arms = A.paired_matrix(df, "auc", "patience3")
    assert m.shape == (5, 4) and list(seeds) == [0, 1, 2, 3, 4]
    assert arms == ["baseline", "rotation", "missing_patch", "corruption"]
    assert np.isnan(m[4, 3]) and np.isfinite(np.delete(m.ravel(), 4 * 4 + 3)).all()


def test_vectorised_holm_agrees_with_multipletests():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(7)
    p = rng.uniform(0, 0.2, (6, 5))  # few rows: every multipletests call runs gc.collect()
    p[3, 2] = np.nan
    batch = ST.holm(p)
    for row_p, row_adj in zip(p, batch):
        ok = np.isfinite(row_p)
        np.testing.assert_allclose(row_adj[ok], multipletests(row_p[ok], method="holm")[1])
        assert np.isnan(row_adj[~ok]).all()
        np.testing.assert_allclose(ST.holm(row_p), row_adj)  # 1-D path (multipletests) == batch path


def test_several_baseline_settings_are_a_pairing_error():
    raw = make_results(n_seeds=3)
    extra = raw[raw["arm"] == "baseline"].assign(
        arm="baseline(lr=0.01)", trial_id=lambda d: d["trial_id"] + "b"
    )
    raw = pd.concat([raw.assign(arm=raw["arm"].replace({"baseline": "baseline(lr=0.001)"})), extra])
    with pytest.raises(A.PairingError, match="several baseline arms"):
        A.check_pairing(R.tidy_results(raw))


# ------------------------------------------------------------------------- issue 14: statistics at n = 8
# Each test names the item of issue #14 it covers; each failed on the code before the fix.


def _table_from_diffs(base: np.ndarray, arm: np.ndarray, metric: str = "test_auc") -> pd.DataFrame:
    """A one-regime, one-arm tidy table with the given per-seed values (n,)."""
    n = base.size
    rows = []
    for name, values in (("baseline", base), ("rotation", arm)):
        for s, v in enumerate(values):
            rows.append(
                {"trial_id": f"{name}_s{s}", "arm": name, "task": "none" if name == "baseline" else name}
                | {"seed": s, "regime": "none", "patience": 0, "status": "ok", metric: float(v)}
            )
    df = pd.DataFrame(rows)
    for col in (*A.CLASSIFICATION_METRICS, "test_loss"):
        if col not in df:
            df[col] = 0.5
    assert len(df) == 2 * n
    return df


def test_item1_float_noise_pairs_are_ties():
    # 0.86 - 0.84 = 0.020000000000000018 and 0.815 - 0.795 = 0.019999999999999907: one tie in exact arithmetic.
    base = np.array([0.84, 0.815, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20])
    arm = np.array([0.86, 0.795, 0.73, 0.64, 0.55, 0.46, 0.37, 0.28])
    d = arm - base
    assert d[0] != -d[1]  # the floating-point differences are not equal ...
    exact = np.round(d * 1000) / 1000  # ... the values they stand for are
    p, n_eff, method = ST.signed_rank_pvalues(d)
    assert method[0] == "exact, ties or zeros (conservative)" and n_eff[0] == 8
    ref = _walsh_count_p(np.round(d * 1000))  # the test on the exact (integer) values
    assert p[0] == pytest.approx(ref)
    assert p[0] != pytest.approx(stats.wilcoxon(d, method="exact").pvalue)  # the untied answer differs
    comp = compare(_table_from_diffs(base, arm))
    assert comp["p_wilcoxon"].iloc[0] == pytest.approx(ref)
    assert comp["wilcoxon_method"].iloc[0] == "exact, ties or zeros (conservative)"
    r = stats.rankdata(np.abs(exact))
    assert comp["rank_biserial"].iloc[0] == pytest.approx((r[exact > 0].sum() - r[exact < 0].sum()) / r.sum())
    # snap_ties: zeros within the tolerance, equal values equal, NaN kept.
    snapped = ST.snap_ties(np.array([0.86 - 0.84, -(0.815 - 0.795), 1e-17, np.nan, 0.03]))
    assert snapped[0] == -snapped[1] and snapped[2] == 0 and np.isnan(snapped[3]) and snapped[4] == 0.03


def test_item1_constant_up_to_noise_differences_have_no_spread():
    base = np.array([0.84, 0.795, 0.70, 0.50, 0.28, 0.89, 0.61, 0.33])
    arm = np.array([0.86, 0.815, 0.72, 0.52, 0.30, 0.91, 0.63, 0.35])  # +0.02 on every seed, up to 1e-16
    d = arm - base
    assert d.std(ddof=1) > 0  # float noise
    assert ST.hedges_gz(d) == math.inf  # no spread: not a 1e15-sized effect
    comp = compare(_table_from_diffs(base, arm)).iloc[0]
    assert comp["hedges_gz"] == math.inf and math.isnan(comp["p_ttest"]) and comp["sd_diff"] == 0
    assert comp["hl_ci_low"] == comp["hl_ci_high"] == pytest.approx(0.02)
    assert "ties" in comp["hl_ci_method"]  # the level of a zero-width interval is not claimed exact
    low, high, method = ST.bootstrap_mean_diff_ci(arm, base, 0.95, 99, np.random.default_rng(0))
    assert method.startswith("degenerate") and low == high


def _walsh_count_p(d: np.ndarray) -> float:
    """Brute-force reference of the tied signed-rank test: Walsh averages <= 0 and >= 0 counted, their
    two-sided p under the untied null of n differences (W+ = a sum of ranks 1..n, each present or not)."""
    n = d.size
    i, j = np.triu_indices(n)
    w = d[i] + d[j]
    null = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) @ np.arange(1, n + 1)
    below, above = np.mean(null <= (w <= 0).sum()), np.mean(null <= (w >= 0).sum())
    return min(1.0, 2 * min(below, above))


def test_exact_distribution_and_sign_flips_match_scipy():
    rng = np.random.default_rng(11)
    for n in (1, 5, 8, 13, 30):
        x = rng.normal(size=(20, n))
        w = np.where(x > 0, stats.rankdata(np.abs(x), axis=1), 0).sum(axis=1)
        np.testing.assert_allclose(
            ST.signed_rank_exact_p(w.astype(int), n), stats.wilcoxon(x, method="exact", axis=1).pvalue
        )
    for _ in range(40):
        n = int(rng.integers(3, 11))
        d = rng.integers(-3, 4, n) / 100
        d = d[d != 0]
        if d.size < 2 or len(np.unique(np.abs(d))) == d.size:
            continue
        assert ST.signed_rank_pvalues(d)[0][0] == pytest.approx(_walsh_count_p(d))


def test_item2_hodges_lehmann_interval_is_the_inverted_signed_rank_test():
    rng = np.random.default_rng(5)
    for n in (6, 8, 12, 16):
        for _ in range(30):
            d = rng.normal(0.5, 1.0, n)
            est, low, high, level, method = ST.hodges_lehmann_ci(d, 0.95)
            i, j = np.triu_indices(n)
            assert est == pytest.approx(np.median((d[i] + d[j]) / 2))
            assert level >= 0.95 and method == "exact signed-rank (Walsh averages)"
            p = stats.wilcoxon(d, method="exact").pvalue
            assert (low > 0 or high < 0) == (p <= 0.05)  # excludes 0 exactly when the test rejects
    assert ST.hodges_lehmann_ci(np.arange(1.0, 9.0))[3] == pytest.approx(1 - 2 * 5 / 256)  # n = 8: 96.1 %
    assert math.isnan(ST.hodges_lehmann_ci(np.arange(1.0, 6.0))[1])  # n = 5: no finite 95 % interval
    p_t, lo, hi = ST.mean_t_ci(d, 0.95)
    ci = stats.ttest_rel(d + 1.0, np.ones(n)).confidence_interval(0.95)
    assert p_t == pytest.approx(stats.ttest_rel(d + 1.0, np.ones(n)).pvalue)
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def _null_studies(n_studies: int, n_seeds: int, rng_seed: int, **kw) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    frames = []
    for i in range(n_studies):
        comp = compare(S.simulated_results(rng, n_seeds=n_seeds, **kw))
        frames.append(comp.assign(study=i))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def null_n8() -> pd.DataFrame:
    """200 null studies (4 arms x 3 regimes x 8 seeds, seed SD 5 pp, noise 2 pp, values on the 1/200 grid
    of an accuracy on 200 test images, so ties are common) through the entry point compare_to_baseline."""
    return _null_studies(200, 8, 2024, grid=1 / 200)


def test_item10_false_positive_rates_at_n8_through_compare_to_baseline(null_n8):
    """Per comparison: the exact test's largest level below 0.05 at n = 8 is 0.039 (the audit: 3.9 %).
    Per regime (Holm over 3): <= 5 % (audit 4.4 %). Study-wise, the default family (Holm over all 9)
    must keep it <= 5 %: Holm per regime gives ~12 % (a defect of the old default)."""
    c = null_n8
    assert (c["holm_family"] == "study").all() and (c["family_size"] == 9).all()
    per_comparison = np.mean(c["p_wilcoxon"] < 0.05)
    assert 0.015 <= per_comparison <= 0.065, per_comparison
    per_regime = c.groupby(["study", "regime"])["p_holm_regime"].min().lt(0.05).mean()
    assert per_regime <= 0.075, per_regime
    studywise = c.groupby("study")["significant"].any().mean()
    assert studywise <= 0.05, studywise
    studywise_regime = c.groupby("study")["p_holm_regime"].min().lt(0.05).mean()
    # The rate the report states for the per-regime family (regimes independent, no ties) agrees.
    stated = S.null_rejection_rates(8, 3, 3)["studywise_regime"]
    assert 0.08 <= stated <= 0.16 and abs(studywise_regime - stated) < 0.06, (studywise_regime, stated)


def test_item1_ties_on_a_metric_grid_get_the_tied_test(null_n8):
    """Every p through the entry point equals the test on the exact (integer-count) differences."""
    rng = np.random.default_rng(2024)
    exact_p = []
    for _ in range(200):
        df = S.simulated_results(rng, n_seeds=8, grid=1 / 200)
        for regime in ("none", "patience3", "patience10"):
            m = df[df["regime"] == regime].pivot(index="seed", columns="arm", values="test_auc")
            counts = np.round(m[list(S.SIM_ARMS)].to_numpy() * 200)  # integers: exact ties and zeros
            exact_p.extend(ST.signed_rank_pvalues((counts[:, 1:] - counts[:, [0]]).T, tol=0.0)[0])
    np.testing.assert_allclose(null_n8["p_wilcoxon"], exact_p)
    assert (null_n8["wilcoxon_method"] == "exact, ties or zeros (conservative)").mean() > 0.3


def test_item2_reported_intervals_cover_at_n8(null_n8):
    """Coverage of the true difference (0) by the reported 95 % intervals over 1,800 null comparisons:
    the exact signed-rank interval's level is 96.1 % at n = 8, the t-interval's 95 %; the BCa interval
    reported before covered 89-90 %."""
    c = null_n8
    hl = np.mean((c["hl_ci_low"] <= 0) & (c["hl_ci_high"] >= 0))
    t = np.mean((c["mean_ci_low"] <= 0) & (c["mean_ci_high"] >= 0))
    assert hl >= 0.935 and t >= 0.93, (hl, t)
    np.testing.assert_allclose(c["hl_ci_level"], 1 - 2 * 5 / 256)


def test_item2_intervals_cover_a_true_shift_at_n8():
    c = _null_studies(60, 8, 7, effects={"rotation": 0.03, "missing_patch": 0.03, "corruption": 0.03})
    hl = np.mean((c["hl_ci_low"] <= 0.03) & (c["hl_ci_high"] >= 0.03))
    t = np.mean((c["mean_ci_low"] <= 0.03) & (c["mean_ci_high"] >= 0.03))
    assert hl >= 0.92 and t >= 0.91, (hl, t)


def test_item3_power_is_that_of_the_holm_corrected_wilcoxon():
    # The audit: at d_z = 1 a Holm(3)-corrected Wilcoxon needs 13-14 seeds, the paired t-test 10.
    assert ST.seeds_for_power(1.0) == 10
    assert 13 <= S.seeds_for_headline_power(1.0, m=3) <= 15
    assert S.seeds_for_headline_power(1.0, m=9) > S.seeds_for_headline_power(1.0, m=3)
    assert S.seeds_for_headline_power(0.0, m=3) == math.inf
    # The fast simulation agrees with a brute-force one through signed_rank_pvalues and holm.
    rng = np.random.default_rng(3)
    e = rng.standard_normal((3000, 4, 14))
    d = (e[:, 1:] - e[:, :1]) / math.sqrt(2)
    d[:, 0] += 1.0
    p = ST.signed_rank_pvalues(d.reshape(-1, 14))[0].reshape(3000, 3)
    assert S.headline_power(14, 3, 1.0) == pytest.approx(np.mean(ST.holm(p)[:, 0] < 0.05), abs=0.035)


def test_item3_planning_range_brackets_the_observed_effect():
    df = tidy(n_seeds=8, effects={"corruption": 0.015}, noise_sd=0.01)
    comp = compare(df)
    plan = S.power_planning(comp)
    assert list(plan.columns) == S.PLANNING_COLUMNS and len(plan) == len(comp)
    dz = comp["mean_diff"] / comp["sd_diff"]
    assert ((plan["dz_ci80_low"] < dz) & (dz < plan["dz_ci80_high"])).all()
    assert (plan["seeds_80_min"] <= plan["seeds_80_max"]).all()
    assert np.isinf(plan.loc[plan["dz_ci80_low"] < 0, "seeds_80_max"]).all()  # a CI reaching 0: no upper end


def test_item5_all_zero_comparison_counts_in_holm_with_p_one():
    df = tidy(n_seeds=8, effects={"rotation": 0.03, "missing_patch": 0.0, "corruption": 0.03}, noise_sd=0.01)
    base = df["arm"] == "baseline"
    mp = df["arm"] == "missing_patch"
    df.loc[mp, "test_auc"] = df.loc[base, "test_auc"].to_numpy()  # identical to the baseline on every seed
    comp = compare(df, family="regime")
    for regime, g in comp.groupby("regime"):
        g = g.set_index("arm")
        assert g.loc["missing_patch", "p_wilcoxon"] == 1.0 and g.loc["missing_patch", "n_nonzero"] == 0
        p = g.loc[["rotation", "missing_patch", "corruption"], "p_wilcoxon"].to_numpy()
        np.testing.assert_allclose(g.loc[["rotation", "missing_patch", "corruption"], "p_holm"], ST.holm(p))
        assert g.loc["rotation", "p_holm"] >= min(1.0, 3 * g["p_wilcoxon"].min()) - 1e-12 or (
            g.loc["rotation", "p_holm"] >= g.loc["corruption", "p_holm"]
        )
    smallest = comp.loc[comp.groupby("regime")["p_wilcoxon"].idxmin()]
    np.testing.assert_allclose(smallest["p_holm"], np.minimum(1, 3 * smallest["p_wilcoxon"]))
    # Item 8: eight seeds were run; the warning says the differences were zero, not "needs >= 7 seeds".
    w = comp.set_index("arm").loc["missing_patch", "warning"].iloc[0]
    assert "8 paired seeds, every difference zero" in w and "7 seeds" not in w
    assert "every difference zero" in comp.set_index("arm").loc["missing_patch", "headline"].iloc[0]


def test_item6_effect_sizes_share_one_sign_for_lower_is_better_metrics():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.6, 10)
    df = _table_from_diffs(base, base - 0.05 - rng.uniform(0, 0.02, 10), metric="test_loss")
    comp = compare(df, metric="test_loss").iloc[0]
    assert comp["mean_diff"] < 0  # the arm's loss is lower: the arm is better
    assert comp["hedges_gz"] > 0 and comp["rank_biserial"] == 1.0 and comp["prob_improvement"] == 1.0
    d = (base - 0.05) - base
    assert ST.hedges_gz(d, higher_better=False) == -ST.hedges_gz(d)


def test_item8_negative_infinity_is_not_na():
    from study.report.formatting import num as _num

    assert _num(-math.inf) == "\u2212\u221e" and _num(math.inf) == "\u221e" and _num(math.nan) == "n/a"


# --------------------------------------------------------------------- issue 15: label fractions as a dimension

FRACTIONS = (0.05, 0.2, 1.0)



def fractions_table(**kw) -> pd.DataFrame:
    kw = {"n_seeds": 12, "noise_sd": 0.01, "label_fractions": FRACTIONS} | kw
    return tidy(**kw)


def test_comparisons_run_per_fraction_and_regime_paired_on_seed_and_fraction():
    df = fractions_table(fraction_effects={0.05: {"corruption": 0.06}})
    comp = compare(df, family="regime")
    assert len(comp) == 3 * 3 * 3
    assert list(comp["label_fraction"].unique()) == list(FRACTIONS)  # fractions ascending, outermost
    pairing = A.check_pairing(df)
    assert pairing.fractions == FRACTIONS and len(pairing.cells) == 9
    for (f, regime), g in comp.groupby(["label_fraction", "regime"]):
        # The pair of a seed is the same seed at the same fraction: differences from that cell's rows only.
        cell = df[(df["label_fraction"] == f) & (df["regime"] == regime)]
        wide = cell.pivot(index="seed", columns="arm", values="test_auc")
        d = (wide[["rotation", "missing_patch", "corruption"]].to_numpy() - wide[["baseline"]].to_numpy()).T
        p, _, _ = ST.signed_rank_pvalues(d)
        np.testing.assert_allclose(
            g.set_index("arm").loc[["rotation", "missing_patch", "corruption"], "p_wilcoxon"], p
        )
        m, seeds, arms = A.paired_matrix(df, "auc", regime, label_fraction=f)
        assert m.shape == (12, 4) and list(seeds) == list(range(12))
    corr = comp[comp["arm"] == "corruption"].set_index(["label_fraction", "regime"])
    assert corr.loc[0.05, "significant"].all() and not corr.loc[1.0, "significant"].any()
    assert corr.loc[0.05, "hl_estimate"].between(0.05, 0.07).all()
    # Row order of the input does not matter: pairing is by key, not position.
    shuffled = compare(df.sample(frac=1, random_state=3), family="regime")
    pd.testing.assert_frame_equal(comp, shuffled)
    assert "Corruption removal vs baseline, 5 % labels, no early stopping: +" in comp["headline"].iloc[2]


def test_a_seed_missing_at_one_fraction_is_unpaired_even_if_other_fractions_have_it():
    raw = make_results(n_seeds=4, label_fractions=FRACTIONS)
    raw = raw[~((raw["arm"] == "rotation") & (raw["seed"] == 3) & (raw["label_fraction"] == 0.2))]
    with pytest.raises(A.PairingError, match=r"rotation.*label fraction 0\.2.*seed\(s\) 3"):
        A.check_pairing(R.tidy_results(raw))
    dup = make_results(n_seeds=3, label_fractions=FRACTIONS)
    extra = dup[(dup["arm"] == "rotation") & (dup["seed"] == 1) & (dup["label_fraction"] == 1.0)]
    with pytest.raises(A.PairingError, match=r"2 trials for seed 1 in regime 'none', label fraction 1"):
        A.check_pairing(R.tidy_results(pd.concat([dup, extra.assign(trial_id="again")])))


def test_holm_family_spans_fractions_regimes_and_arms():
    df = fractions_table()
    comp = compare(df)
    assert (comp["family_size"] == 27).all() and (comp["holm_family"] == "study").all()
    np.testing.assert_allclose(comp["p_holm"], ST.holm(comp["p_wilcoxon"].to_numpy()))
    assert (comp["min_n_for_significance"] == ST.min_n_for_significance(0.05, 27)).all()  # 11 seeds
    per_cell = compare(df, family="regime")
    assert (per_cell["family_size"] == 3).all()
    assert per_cell["holm_family"].iloc[0] == "none at label fraction 0.05"
    for _, g in per_cell.groupby(["label_fraction", "regime"]):
        np.testing.assert_allclose(g["p_holm"], ST.holm(g["p_wilcoxon"].to_numpy()))
    np.testing.assert_allclose(per_cell["p_holm_study"], comp["p_holm"])


def test_a_table_without_the_column_is_one_fraction_and_analyses_as_before():
    old = make_results(n_seeds=8, effects={"corruption": 0.02})
    assert "label_fraction" not in old
    new = make_results(n_seeds=8, effects={"corruption": 0.02}, label_fractions=[1.0])
    a, b = R.tidy_results(old), R.tidy_results(new)
    assert (a["label_fraction"] == 1.0).all() and A.label_fractions(a) == [1.0]
    pd.testing.assert_frame_equal(compare(a), compare(b))
    pd.testing.assert_frame_equal(T.summarise(a), T.summarise(b))
    assert not A.check_pairing(a).several_fractions
    # Frames that never went through tidy_results (simulations, hand-built tables) are one fraction too.
    assert compare(S.simulated_results(np.random.default_rng(0), n_seeds=4))["label_fraction"].eq(1.0).all()


def test_several_fractions_need_one_named_for_one_cell():
    df = fractions_table(n_seeds=4)
    with pytest.raises(A.AnalysisError, match="pass label_fraction"):
        A.paired_matrix(df, "auc", "none")
    res = A.friedman(df, "auc", "none", label_fraction=0.2)
    assert res["label_fraction"] == 0.2 and res["n"] == 4


# ------------------------------------------------------------------- simulation speed (cached, same numbers)


def test_fast_signed_rank_of_continuous_differences_is_the_entry_points():
    d = np.random.default_rng(5).standard_normal((300, 9))
    np.testing.assert_allclose(S._wplus_p(d), ST.signed_rank_pvalues(d)[0])


def test_simulation_results_are_cached_on_disk_and_equal_a_fresh_computation(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path))
    fresh = S._compute_seeds_table(5, 0.05, 0.8)
    S._seeds_table.cache_clear()
    np.testing.assert_array_equal(S._seeds_table(5, 0.05, 0.8), fresh)
    files = sorted(p.name for p in (tmp_path / "simulate").iterdir())
    assert len(files) == 1 and files[0].startswith("seeds-")
    S._seeds_table.cache_clear()
    np.testing.assert_array_equal(S._seeds_table(5, 0.05, 0.8), fresh)  # read back: inf survives JSON
    S.null_rejection_rates.cache_clear()
    rates = S.null_rejection_rates(6, 2, 2, n_sim=500)
    assert rates == S._null_rejection_rates(6, 2, 2, 0.05, 500, 0)
    assert len(list((tmp_path / "simulate").glob("null-*.json"))) == 1
    monkeypatch.setenv("STUDY_SIM_CACHE", "0")
    S.null_rejection_rates.cache_clear()
    assert S.null_rejection_rates(6, 2, 3, n_sim=500)["n_sim"] == 500
    assert len(list((tmp_path / "simulate").glob("null-*.json"))) == 1  # not written when off
