"""The cost-benefit table (study.report.cost): costs counted once per pretext phase, gains taken from the paired
comparisons, gain per device-hour as their ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_results

from study import analysis as A
from study.report import cost as C
from study.report import tables as T

SECONDS = {"rotation": 36.0, "missing_patch": 72.0, "corruption": 144.0}


def _with_costs(df: pd.DataFrame, devices: float = 2.0) -> pd.DataFrame:
    """Cost columns as the runner records them: one pretext phase per arm x seed (shared by its regimes and
    label fractions), seconds growing with the seed so that means and sums can be told apart."""
    df = df.copy()
    ssl = df["task"] != "none"
    df.loc[ssl, "pretext_key"] = df["arm"] + "-key-" + df["seed"].astype(str)
    df.loc[ssl, "pretext_seconds"] = df["task"].map(SECONDS) * (1 + df["seed"])
    df.loc[ssl, "pretext_devices"] = devices
    df.loc[ssl, "pretext_device"] = "CPU"
    df.loc[ssl, "pretext_images_seen"] = 1000.0
    df.loc[ssl, "pretext_flops"] = 3e12
    return df


def test_each_phase_is_counted_once_across_regimes_and_label_fractions():
    df = _with_costs(make_results(n_seeds=4, label_fractions=[0.1, 1.0]))
    phases = C.pretext_phases(df)
    assert len(phases) == 3 * 4  # 3 SSL arms x 4 seeds; 3 regimes x 2 fractions share each phase
    costs = C.phase_costs(df).set_index("arm")
    assert list(costs.index) == ["rotation", "missing_patch", "corruption"]  # no baseline row
    seconds = SECONDS["corruption"] * np.arange(1, 5)
    row = costs.loc["corruption"]
    assert row["runs"] == 4 and row["device"] == "CPU"
    assert row["seconds_mean"] == pytest.approx(seconds.mean())
    assert row["seconds_sd"] == pytest.approx(seconds.std(ddof=1))
    assert row["device_hours_mean"] == pytest.approx(seconds.mean() * 2 / 3600)
    assert row["device_hours_total"] == pytest.approx(seconds.sum() * 2 / 3600)
    assert row["flops_mean"] == 3e12 and row["images_seen_mean"] == 1000.0


def test_gain_is_the_paired_mean_difference_and_per_hour_its_ratio_to_one_phase():
    df = _with_costs(
        make_results(n_seeds=6, effects={"rotation": 0.0, "missing_patch": 0.05, "corruption": 0.02})
    )
    comp = T.comparison_table(A.compare_to_baseline(df), 0.05, False)
    cb = C.cost_benefit(df, comp)
    assert len(cb) == len(comp) == 3 * 3 and list(cb.columns) == C.COST_BENEFIT_COLUMNS
    merged = cb.merge(comp, on=["label_fraction", "regime", "arm"])
    np.testing.assert_allclose(merged["gain"], merged["mean_diff"])
    np.testing.assert_allclose(merged["gain_ci_low"], merged["mean_ci_low"])
    hours = SECONDS["missing_patch"] * np.arange(1, 7).mean() * 2 / 3600
    mp = cb[cb["arm"] == "missing_patch"]
    np.testing.assert_allclose(mp["gain_per_device_hour"], mp["gain"] / hours)
    np.testing.assert_allclose(mp["gain_per_device_hour_ci_low"], mp["gain_ci_low"] / hours)
    np.testing.assert_allclose(mp["gain_per_device_hour_ci_high"], mp["gain_ci_high"] / hours)
    # the true 5 pp effect shows through as a clearly positive gain
    assert (mp["gain"] > 0.02).all()


def test_runs_without_recorded_costs_give_missing_values_not_zeros():
    df = make_results(n_seeds=3)
    df.loc[df["task"] != "none", "pretext_key"] = df["arm"] + df["seed"].astype(str)
    costs = C.phase_costs(df)
    assert costs["runs"].tolist() == [3, 3, 3]
    assert costs[["seconds_mean", "device_hours_total", "flops_mean"]].isna().all().all()
    cb = C.cost_benefit(df, T.comparison_table(A.compare_to_baseline(df), 0.05, False))
    assert cb["gain_per_device_hour"].isna().all() and cb["gain"].notna().all()
    assert C.phase_costs(make_results(n_seeds=3)).empty  # no pretext_key column at all
    assert C.cost_benefit(df, pd.DataFrame(columns=A.COMPARISON_COLUMNS)).empty
