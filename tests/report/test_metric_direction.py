"""Issue 26, defect 4: a metric's direction (higher is better, lower is better, none) comes from one place
(`study.spec.schema.metric_direction`: its table, and the task registry for `pretext_<metric>`), and every
consumer follows it: effect sizes, Friedman ranks, sentences, the forest plot and the cost-benefit gain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_results

from study import analysis as A
from study.report import cost as C
from study.report import plots
from study.report import tables as T
from study.spec import schema

# --------------------------------------------------------------------------------------------- the one table


def test_directions_come_from_the_schema_and_the_task_registry():
    assert schema.metric_direction("test_auc") == schema.HIGHER
    assert schema.metric_direction("test_loss") == schema.LOWER
    assert schema.metric_direction("val_auc") == schema.HIGHER and schema.metric_direction("val_loss") == -1
    assert schema.metric_direction("stop_epoch") == schema.NO_DIRECTION
    # pretext metrics: the registry's (errors lower is better, accuracy/SSIM/top-1 higher)
    assert schema.metric_direction("pretext_mse_mean") == schema.LOWER
    assert schema.metric_direction("pretext_aad_circ_deg") == schema.LOWER
    assert schema.metric_direction("pretext_ssim_mean") == schema.HIGHER
    assert schema.metric_direction("pretext_top1") == schema.HIGHER
    assert schema.metric_direction("pretext_seconds") == schema.NO_DIRECTION  # a cost, not a score
    assert not A.higher_is_better("pretext_mse_mean") and not A.higher_is_better("stop_epoch")
    assert A.metric_direction("test_auc") == 1


# ------------------------------------------------------------------------------------------------- tables


def _with(df: pd.DataFrame, column: str, values: dict[str, float], sd: float = 0.5) -> pd.DataFrame:
    """``df`` with ``column`` = a per-arm level + seed noise shared by the arms + a little own noise."""
    df = df.copy()
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 2 * sd, df["seed"].max() + 1)
    df[column] = [values[a] + shared[s] + rng.normal(0, sd) for a, s in zip(df["arm"], df["seed"])]
    return df


def _stop_epoch_table() -> pd.DataFrame:
    # The corruption arm stops 5 epochs earlier on every seed: it is lower, not worse.
    levels = {"baseline": 20.0, "rotation": 20.0, "missing_patch": 20.0, "corruption": 15.0}
    return _with(make_results(n_seeds=9), "stop_epoch", levels)


def _loss_table(column: str = "test_loss") -> pd.DataFrame:
    # The corruption arm's loss is 0.1 lower on every seed: it is better.
    levels = {"baseline": 0.5, "rotation": 0.5, "missing_patch": 0.5, "corruption": 0.4}
    return _with(make_results(n_seeds=9), column, levels, sd=0.01)


def _row(comp: pd.DataFrame, arm: str = "corruption", regime: str = "none") -> pd.Series:
    return comp[(comp["arm"] == arm) & (comp["regime"] == regime)].iloc[0]


@pytest.mark.parametrize("metric", ["test_loss", "pretext_mse_mean"])
def test_lower_is_better_metric_improving_is_better(metric):
    df = _loss_table(metric)
    comp = T.comparison_table(A.compare_to_baseline(df, metric=metric), 0.05, False)
    r = _row(comp)
    assert r["hl_estimate"] < 0 and r["significant"]
    assert r["hedges_gz"] > 0 and r["rank_biserial"] > 0 and r["prob_improvement"] > 0.5
    assert "(arm better)" in r["headline"]
    res = A.friedman(df, metric, "none")
    assert min(res["mean_ranks"], key=res["mean_ranks"].get) == "corruption"  # rank 1 = best = lowest loss
    summary = T.fraction_summary(comp)
    assert summary["n_better"].iloc[0] >= 1 and summary["n_worse"].iloc[0] == 0
    assert comp.loc[summary["best"].iloc[0], "arm"] == "corruption"


def test_a_metric_without_direction_is_higher_or_lower_never_better_or_worse():
    df = _stop_epoch_table()
    comp = T.comparison_table(A.compare_to_baseline(df, metric="stop_epoch"), 0.05, False)
    r = _row(comp)
    assert r["significant"] and r["hl_estimate"] < 0
    assert "(arm lower)" in r["headline"]
    assert not any(w in h for h in comp["headline"] for w in ("better", "worse"))
    assert r["hedges_gz"] < 0  # positive = arm higher for a metric without a direction
    res = A.friedman(df, "stop_epoch", "none")
    assert max(res["mean_ranks"], key=res["mean_ranks"].get) == "corruption"  # rank 1 = highest
    summary = T.fraction_summary(comp)  # n_better / n_worse read "higher" / "lower" here
    assert summary["n_better"].iloc[0] == 0 and summary["n_worse"].iloc[0] >= 1


# --------------------------------------------------------------------------------------------------- cost


def test_cost_benefit_gain_is_positive_when_a_loss_improves():
    df = _loss_table()
    comp = T.comparison_table(A.compare_to_baseline(df, metric="test_loss"), 0.05, False)
    cb = C.cost_benefit(df, comp)
    r = cb[(cb["arm"] == "corruption") & (cb["regime"] == "none")].iloc[0]
    assert r["gain"] == pytest.approx(0.1, abs=0.02)
    assert 0 < r["gain_ci_low"] < r["gain"] < r["gain_ci_high"]


# --------------------------------------------------------------------------------------------- forest plot


def _dots(fig) -> list[float]:
    return [ln.get_xdata()[0] for ln in fig.axes[0].lines if ln.get_marker() == "o"]


def test_forest_plot_orients_a_lower_is_better_metric_so_right_favours_the_arm():
    comp = T.comparison_table(A.compare_to_baseline(_loss_table(), metric="test_loss"), 0.05, False)
    fig = plots.forest_plot(comp, "\u0394 test loss", scale=1.0)
    np.testing.assert_allclose(_dots(fig), -comp["hl_estimate"])
    label = fig.axes[0].get_xlabel()
    assert "favours baseline" in label and "favours arm" in label and "lower is better" in label
    fig = plots.forest_plot(comp.assign(metric="test_auc"), "\u0394 AUC (pp)", scale=100.0)
    np.testing.assert_allclose(_dots(fig), comp["hl_estimate"] * 100)
    assert "favours arm" in fig.axes[0].get_xlabel()


def test_forest_plot_of_a_metric_without_direction_names_no_side():
    comp = T.comparison_table(A.compare_to_baseline(_stop_epoch_table(), metric="stop_epoch"), 0.05, False)
    fig = plots.forest_plot(comp, "\u0394 stop epoch")
    np.testing.assert_allclose(_dots(fig), comp["hl_estimate"])
    assert "favours" not in fig.axes[0].get_xlabel()


def test_forest_plot_margin_band_in_plotted_units():
    comp = T.comparison_table(A.compare_to_baseline(make_results(n_seeds=6)), 0.05, False)
    assert not plots.forest_plot(comp, "\u0394 AUC (pp)").axes[0].patches  # default: no band
    fig = plots.forest_plot(comp, "\u0394 AUC (pp)", margin=0.02)
    (band,) = fig.axes[0].patches
    assert band.get_x() == pytest.approx(-2.0) and band.get_width() == pytest.approx(4.0)  # +-2 pp
    loss = T.comparison_table(A.compare_to_baseline(_loss_table(), metric="test_loss"), 0.05, False)
    (band,) = plots.forest_plot(loss, "\u0394 test loss", margin=0.05).axes[0].patches
    assert band.get_x() == pytest.approx(-0.05) and band.get_width() == pytest.approx(0.1)  # own units


# ------------------------------------------------------------------------------------------------- report


def test_report_on_stop_epoch_says_higher_or_lower(tmp_path):
    from fixtures_results import write_run_dir

    from study.report.write import write_report

    df = _stop_epoch_table()
    run = write_run_dir(tmp_path / "run", df.assign(stop_epoch=df["stop_epoch"].round()))
    write_report(run, metric="stop_epoch")
    md = (run / "report.md").read_text()
    assert (
        "significant, arm lower" in md and "positive = arm higher" in md and "mean ranks (1 = highest)" in md
    )
    assert "(arm better)" not in md and "(arm worse)" not in md and "beats the baseline" not in md
