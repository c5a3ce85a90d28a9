"""The label-fraction summary (issue 26, defect 6): a trend across label fractions is stated only when the
one declared trend test is significant, and no per-fraction estimate is picked after looking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_results, write_run_dir

from study import analysis as A
from study import stats as ST
from study.report import results_table as R
from study.report import tables as T
from study.report.write import write_report

pytestmark = pytest.mark.usefixtures("private_simulation_cache")

FRACTIONS = [0.05, 0.2, 1.0]
ARMS = ("rotation", "missing_patch", "corruption")


def _table(fraction_effects=None, rng_seed: int = 0, n_seeds: int = 10) -> pd.DataFrame:
    return R.tidy_results(
        make_results(
            n_seeds=n_seeds,
            effects={a: 0.0 for a in ARMS},
            noise_sd=0.02,
            label_fractions=FRACTIONS,
            fraction_effects=fraction_effects,
            rng_seed=rng_seed,
        )
    )


def test_trend_test_holds_its_level_on_null_gains():
    rng = np.random.default_rng(0)
    p = np.array([T.gain_trend(rng.standard_normal((10, 3)))["p"] for _ in range(1500)])
    assert np.isfinite(p).all() and (p < 0.05).mean() <= 0.06, (p < 0.05).mean()


def test_trend_test_slope_is_the_per_seed_least_squares_slope_and_two_fractions_a_difference():
    g = np.array([[3.0, 2.0, 1.0], [5.0, 3.0, 1.0], [1.0, 1.0, 1.0], [2.0, 1.5, 1.0]])
    res = T.gain_trend(g)
    slopes = np.array([-1.0, -2.0, 0.0, -0.5])
    assert res["slope"] == pytest.approx(ST.hodges_lehmann_ci(slopes)[0])
    assert res["p"] == pytest.approx(ST.signed_rank_pvalues(slopes[None])[0][0])
    two = T.gain_trend(np.array([[1.0, 0.0], [2.0, 0.5], [np.nan, 1.0]]))
    assert two["n"] == 2 and two["n_fractions"] == 2
    assert T.gain_trend(np.ones((5, 1)))["p"] != T.gain_trend(np.ones((5, 1)))["p"]  # NaN: one fraction


def test_fraction_trend_finds_a_true_trend_and_orients_the_gain():
    df = _table({0.05: {"corruption": 0.06, "missing_patch": 0.06, "rotation": 0.06}}, n_seeds=12)
    res = T.fraction_trend(df, "test_auc")
    assert res["n"] == 12 and res["n_fractions"] == 3
    assert res["p"] < 0.01 and res["slope"] < -0.01  # the gain shrinks as labels are added
    loss = df.assign(test_loss=1 - df["test_auc"])  # lower is better: the same gain, the same sign
    assert T.fraction_trend(loss, "test_loss")["slope"] == pytest.approx(res["slope"])


def _headline(tmp_path, results: pd.DataFrame) -> str:
    run = write_run_dir(tmp_path / "run", results)
    md, _ = write_report(run)
    text = md.read_text()
    start = text.index("## Secondary comparisons (exploratory)\n")
    return text[start : text.find("\n## ", start + 3)]


def test_null_study_whose_means_fall_with_the_labels_gets_no_trend_sentence(tmp_path):
    """No true effect anywhere; the descriptive mean gain happens to be largest at the fewest labels and
    to shrink (the old report then said "the pattern the self-supervised literature reports")."""
    results = make_results(
        n_seeds=10,
        effects={a: 0.0 for a in ARMS},
        noise_sd=0.02,
        label_fractions=FRACTIONS,
        fraction_effects={0.05: {a: 0.004 for a in ARMS}, 0.2: {a: 0.002 for a in ARMS}},
    )
    df = R.tidy_results(results)
    per = T.fraction_summary(A.compare_to_baseline(df))
    assert per["mean_hl"].iloc[0] > per["mean_hl"].iloc[1] > per["mean_hl"].iloc[2]  # the old trigger
    assert not A.compare_to_baseline(df)["significant"].any()
    assert T.fraction_trend(df, "test_auc")["p"] >= 0.05
    head = _headline(tmp_path, results)
    assert "literature" not in head and "largest at the fewest labels" not in head
    assert "shrinks as labels are added" not in head
    assert "not significant at \u03b1 = 0.05, so no trend is claimed" in head
    assert "most favourable" not in head
    assert (
        "- 5 % labels: no arm beats the baseline (Holm within the primary cell (m = 3) or the secondary family "
        "(m = 24))." in head
    )


def test_a_true_trend_is_stated_with_its_test(tmp_path):
    results = make_results(
        n_seeds=12,
        effects={a: 0.0 for a in ARMS},
        noise_sd=0.01,
        label_fractions=FRACTIONS,
        fraction_effects={0.05: {a: 0.05 for a in ARMS}},
    )
    head = _headline(tmp_path, results)
    assert "Trend test across the label fractions (declared: per seed, the slope of the gain" in head
    assert "12 seeds' slopes): slope \u2212" in head
    assert "the gain shrinks as labels are added, the pattern the self-supervised literature reports." in head
