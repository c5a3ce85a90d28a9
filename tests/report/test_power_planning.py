"""The power-planning range of a non-significant comparison (report/simulate.power_planning): never a crash,
and a range the root-finder cannot give is marked n/a with its reason (issue 26, defect 2)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_results, write_run_dir
from scipy import stats

from study import analysis as A
from study.report import results_table as R
from study.report import simulate as S
from study.report import tables as T
from study.report.write import write_report

pytestmark = pytest.mark.usefixtures("private_simulation_cache")

# scipy's nct.cdf returns NaN at nc = t - 10 for these inputs (t = 4.09, df = 8): brentq used to raise.
NAN_CASE = (0.03731128327740147, 0.02734644991987157, 9)


def test_dz_interval_where_the_noncentral_t_returns_nan_is_an_interval_not_an_error():
    lo, hi = S.dz_interval(*NAN_CASE)
    mean, sd, n = NAN_CASE
    assert np.isfinite(lo) and np.isfinite(hi) and lo < mean / sd < hi
    # The 80 % interval inverts the noncentral t: its ends are the 90 % and 10 % quantiles' noncentralities.
    t = mean / sd * math.sqrt(n)
    assert stats.nct.cdf(t, n - 1, lo * math.sqrt(n)) == pytest.approx(0.9, abs=1e-5)
    assert stats.nct.cdf(t, n - 1, hi * math.sqrt(n)) == pytest.approx(0.1, abs=1e-5)


def test_dz_interval_over_a_grid_of_observed_effects_never_raises():
    for n in (3, 5, 9, 16, 40):
        for dz in np.linspace(-4, 4, 41):
            lo, hi = S.dz_interval(dz, 1.0, n)
            assert (np.isnan(lo) and np.isnan(hi)) or lo < dz < hi, (n, dz, lo, hi)


def _comparisons(n_seeds: int = 9) -> pd.DataFrame:
    df = A.compare_to_baseline(
        R.tidy_results(make_results(n_seeds=n_seeds, effects={"corruption": 0.02}, noise_sd=0.01))
    )
    return T.comparison_table(df, 0.05, False)


def test_a_failed_inversion_gives_an_na_planning_range_with_its_reason(monkeypatch):
    comp = _comparisons()
    monkeypatch.setattr(S.stats.nct, "cdf", lambda *a, **k: np.nan)
    plan = S.power_planning(comp)  # used to raise ValueError from brentq
    assert list(plan.columns) == S.PLANNING_COLUMNS and len(plan) == len(comp)
    assert plan[["dz_ci80_low", "dz_ci80_high", "seeds_80_min", "seeds_80_max"]].isna().all().all()
    assert plan["planning_note"].str.contains("noncentral-t inversion").all()


def test_planning_note_says_why_a_range_is_missing_and_is_empty_when_there_is_one():
    comp = _comparisons()
    plan = S.power_planning(comp)
    assert (plan["planning_note"] == "").all() and np.isfinite(plan["dz_ci80_low"]).all()
    few = S.power_planning(comp.assign(n=2))
    assert few["planning_note"].str.contains("fewer than 3").all()
    flat = S.power_planning(comp.assign(sd_diff=0.0))
    assert flat["planning_note"].str.contains("no spread").all()


def _run_with_nan_case(tmp_path) -> tuple[str, pd.DataFrame]:
    """A 9-seed run whose corruption-vs-baseline differences in regime "none" have exactly NAN_CASE's mean
    and SD (the other comparisons are noise), so every report path meets the failing inversion."""
    results = make_results(n_seeds=9, noise_sd=0.02)
    mean, sd, n = NAN_CASE
    z = np.random.default_rng(1).standard_normal(n)
    d = (z - z.mean()) / z.std(ddof=1) * sd + mean
    base = results[(results["arm"] == "baseline") & (results["regime"] == "none")].sort_values("seed")
    cell = (results["arm"] == "corruption") & (results["regime"] == "none")
    order = results.loc[cell].sort_values("seed").index
    for col in A.CLASSIFICATION_METRICS:
        if col in results:
            results.loc[order, col] = base[col].to_numpy() + d
    run = write_run_dir(tmp_path / "run", results)
    md, _ = write_report(run)
    return md.read_text(), pd.read_csv(run / "comparisons.csv")


def _nan_in_the_tails(monkeypatch, width: float = 6.0) -> None:
    """scipy's nct.cdf as it fails: NaN in its saturated tails (here every nc more than ``width`` from x)."""
    real = stats.nct.cdf
    monkeypatch.setattr(
        S.stats.nct, "cdf", lambda x, df, nc: np.nan if abs(nc - x) > width else real(x, df, nc)
    )


def test_report_on_a_run_that_meets_nan_in_the_noncentral_t_is_written(tmp_path, monkeypatch):
    _nan_in_the_tails(monkeypatch)  # the old bracket started 10 from t: brentq raised on every comparison
    text, comp = _run_with_nan_case(tmp_path)
    row = comp[(comp["arm"] == "corruption") & (comp["regime"] == "none")].iloc[0]
    assert row["mean_diff"] == pytest.approx(NAN_CASE[0]) and row["sd_diff"] == pytest.approx(NAN_CASE[1])
    assert np.isfinite(comp["dz_ci80_low"]).all() and comp["planning_note"].isna().all()
    assert "Power planning" in text and "noncentral" not in text


def test_report_marks_a_failed_planning_range_na_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(S.stats.nct, "cdf", lambda *a, **k: np.nan)
    text, comp = _run_with_nan_case(tmp_path)
    assert comp["planning_note"].str.contains("noncentral-t inversion").all()
    assert "n/a (the noncentral-t inversion failed numerically" in text
