"""The report's tables over a results table: reading and checking results.csv, the pretext and probe
tables, learning curves, label-efficiency tables, titles and sentences (tests/support/fixtures_results.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures_results import compare, make_results, tidy
from scipy import stats

from study import analysis as A
from study import stats as ST
from study.report import labels as L
from study.report import pretext_tables as PT
from study.report import results_table as R
from study.report import sentences as SN
from study.report import tables as T

FRACTIONS = (0.05, 0.2, 1.0)

pytestmark = pytest.mark.usefixtures("private_simulation_cache")



def fractions_table(**kw) -> pd.DataFrame:
    kw = {"n_seeds": 12, "noise_sd": 0.01, "label_fractions": FRACTIONS} | kw
    return tidy(**kw)



def test_pretext_tables_aggregate_one_value_per_seed():
    values = {
        "rotation": {s: {"pretext_mse": 0.01 * (s + 1)} for s in range(4)},
        "corruption": {s: {"pretext_ssim_mean": 0.5 + 0.1 * s} for s in range(4)},
    }
    df = tidy(n_seeds=4, pretext_values=values)
    tables = PT.pretext_tables(df)
    rot, img = tables["rotation"], tables["image"]
    row = rot[(rot["arm"] == "rotation") & (rot["metric"] == "pretext_mse")].iloc[0]
    expected = np.array([0.01, 0.02, 0.03, 0.04])
    assert row["n"] == 4  # seeds, not seed x regime rows
    assert row["mean"] == pytest.approx(expected.mean()) and row["sd"] == pytest.approx(expected.std(ddof=1))
    row = img[(img["arm"] == "corruption") & (img["metric"] == "pretext_ssim_mean")].iloc[0]
    assert row["mean"] == pytest.approx(0.65) and row["n"] == 4
    assert set(img["arm"]) == {"missing_patch", "corruption"} and set(rot["arm"]) == {"rotation"}


def test_pretext_tables_empty_when_all_nan():
    raw = make_results(n_seeds=3)
    for c in [
        c for c in raw.columns if c.startswith("pretext_") and c not in ("pretext_cached", "pretext_lr")
    ]:
        raw[c] = np.nan
    tables = PT.pretext_tables(R.tidy_results(raw))
    assert set(tables) == {"rotation", "image", "contrastive"} and all(t.empty for t in tables.values())


def test_pretext_tables_keep_pretexts_whose_finetune_later_diverged():
    rows = []
    for seed, status, ssim in [(0, "diverged", 0.5), (1, "ok", 0.7), (2, "ok", float("nan"))]:
        for regime in ("none", "patience3"):
            rows.append(
                {
                    "arm": "corruption",
                    "task": "corruption",
                    "seed": seed,
                    "regime": regime,
                    "status": status,
                    "pretext_ssim_mean": ssim,
                    "pretext_mse_mean": 100.0 + seed,
                }
            )
    image = PT.pretext_tables(pd.DataFrame(rows))["image"]
    ssim = image[image["metric"] == "pretext_ssim_mean"].iloc[0]
    assert ssim["n"] == 2 and ssim["mean"] == pytest.approx(0.6)  # seed 2's pretext diverged: no value
    assert image[image["metric"] == "pretext_mse_mean"].iloc[0]["n"] == 3


def test_pretext_shared_by_fractions_is_counted_once_per_seed():
    raw = make_results(n_seeds=6, label_fractions=FRACTIONS, references=True)
    # The first fraction's trial of seed 0 failed before recording its pretext: another fraction's value counts.
    first = (raw["arm"] == "corruption") & (raw["seed"] == 0) & (raw["label_fraction"] == 0.05)
    raw.loc[first, "pretext_mse_mean"] = np.nan
    image = PT.pretext_tables(R.tidy_results(raw))["image"]
    mse = image[(image["arm"] == "corruption") & (image["metric"] == "pretext_mse_mean")].iloc[0]
    per_seed = raw[(raw["arm"] == "corruption") & (raw["regime"] == "none") & (raw["label_fraction"] == 1.0)]
    assert mse["n"] == 6 and mse["mean"] == pytest.approx(per_seed["pretext_mse_mean"].mean())
    refs = PT.pretext_reference_table(R.tidy_results(raw))
    assert (refs["n"] == 6).all() and (refs["n_judged"] <= 6).all()


def test_load_run_roundtrip_and_dtypes(tmp_path):
    make_results(n_seeds=3, status={("rotation", 1): "diverged"}).to_csv(
        tmp_path / "results.csv", index=False
    )
    df = R.load_run(tmp_path)
    assert set(df["regime"]) == {"none", "patience3", "patience10"}  # "none" is a name, not a missing value
    assert df["seed"].dtype == np.int64 and str(df["stop_epoch"].dtype) == "Int64"
    assert str(df["pretext_cached"].dtype) == "boolean"
    assert list(df["regime"].unique()) == ["none", "patience3", "patience10"]
    assert df[df["regime"] == "none"]["arm"].iloc[0] == "baseline"


def test_load_run_lists_missing_columns(tmp_path):
    make_results(n_seeds=2).drop(columns=["test_auc", "status"]).to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(A.ResultsTableError, match=r"\['status', 'test_auc'\]"):
        R.load_run(tmp_path)
    with pytest.raises(A.ResultsTableError, match="run the study first"):
        R.load_run(tmp_path / "nowhere")


def test_percentages_and_bad_status_are_rejected():
    raw = make_results(n_seeds=2)
    raw.loc[0, "test_auc"] = 88.5
    with pytest.raises(A.ResultsTableError, match=r"test_auc = 88.5 for arm 'baseline', seed 0.*fractions"):
        R.tidy_results(raw)
    raw = make_results(n_seeds=2)
    raw.loc[0, "status"] = "crashed"
    with pytest.raises(A.ResultsTableError, match="crashed"):
        R.tidy_results(raw)


def test_runner_extras_and_a_parameterised_baseline_name_are_accepted(tmp_path):
    """The runner adds columns (pretext_key is a text hash) and names the baseline 'baseline(lr=...)' when
    the study varies its learning rate; one such baseline is still the baseline."""
    raw = make_results(n_seeds=4, effects={"rotation(lr=0.001)": 0.0})
    raw["arm"] = raw["arm"].replace({"baseline": "baseline(lr=0.001)"})
    raw["pretext_key"] = [f"k{i:04x}" for i in range(len(raw))]
    raw["pid"] = 123
    raw["diverged_phase"] = np.nan
    raw.to_csv(tmp_path / "results.csv", index=False)
    df = R.load_run(tmp_path)
    assert df["pretext_key"].iloc[0] == "k0000"
    assert L.arm_title("baseline(lr=0.001)") == "No self-supervision (lr=0.001)"
    comp = compare(df)
    assert list(comp["arm"].unique()) == ["rotation(lr=0.001)"]


@pytest.mark.parametrize("bad", [0.0, 1.5, "half", np.nan])
def test_label_fraction_must_be_in_the_unit_interval(bad):
    raw = make_results(n_seeds=2, label_fractions=[0.5, 1.0]).astype({"label_fraction": object})
    raw.loc[raw.index[0], "label_fraction"] = bad
    with pytest.raises(A.ResultsTableError, match="label_fraction must be a number in \\(0, 1\\]"):
        R.tidy_results(raw)


def test_titles_and_headline_format():
    assert L.arm_title("corruption(swap_count=50)") == "Corruption removal (swap_count=50)"
    assert L.regime_title("patience10") == "patience 10" and L.regime_title("none") == "no early stopping"
    row = {
        "arm_title": "Corruption removal",
        "regime_title": "patience 10",
        "metric": "test_auc",
        "n": 8,
        "mean_diff": 0.014,
        "hl_estimate": 0.013,
        "hl_ci_low": -0.003,
        "hl_ci_high": 0.031,
        "p_holm": 0.21,
        "significant": False,
        "underpowered": False,
        "dropped_seeds": "",
    }
    assert SN.headline(row) == (
        "Corruption removal vs baseline, patience 10: +1.3 pp AUC (Hodges\u2013Lehmann; mean +1.4 pp), "
        "95 % signed-rank CI [\u22120.3, 3.1], Holm p = 0.21, n = 8 seeds \u2014 not significant"
    )


def test_consistency_warnings_flag_mixed_data():
    raw = make_results(n_seeds=2)
    raw.loc[raw["arm"] == "rotation", "image_size"] = 128
    warnings = SN.consistency_warnings(R.tidy_results(raw))
    assert len(warnings) == 1 and "image sizes" in warnings[0]


def test_probe_curves_and_exclusions_are_per_fraction():
    raw = make_results(
        n_seeds=5, label_fractions=FRACTIONS, probe={"corruption": 0.1}, status={("rotation", 1): "diverged"}
    )
    df = R.tidy_results(raw)
    probe = T.probe_table(df)
    assert len(probe) == 3 * 4 and list(probe["label_fraction"].unique()) == list(FRACTIONS)
    comp = T.probe_comparisons(df)
    assert len(comp) == 9 and (comp["n"] == 5).all()
    np.testing.assert_allclose(
        comp["p_holm"], ST.holm(comp["p_wilcoxon"].to_numpy())
    )  # over arms x fractions
    from fixtures_results import make_history

    curves = T.learning_curves(make_history(raw, epochs=3))
    assert set(curves["label_fraction"]) == set(FRACTIONS) and (curves["n"] == 5).all()
    _, excluded = R.split_valid(df)
    s = R.exclusion_summary(excluded, by_fraction=True)
    assert list(s["label_fraction"]) == list(FRACTIONS) and (s["n_trials"] == 1).all()


def test_label_efficiency_is_the_t_interval_of_each_arms_mean():
    df = fractions_table(n_seeds=6)
    eff = T.label_efficiency(T.summary_table(df), "test_auc")
    assert len(eff) == 3 * 3 * 4
    r = eff[
        (eff["label_fraction"] == 0.2) & (eff["regime"] == "patience3") & (eff["arm"] == "rotation")
    ].iloc[0]
    x = df[(df["label_fraction"] == 0.2) & (df["regime"] == "patience3") & (df["arm"] == "rotation")][
        "test_auc"
    ]
    ci = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(ci) and r["regime_title"] == "patience 3"


def test_fraction_summary_counts_significant_comparisons_per_fraction():
    df = fractions_table(fraction_effects={0.05: {"corruption": 0.06, "missing_patch": 0.06}})
    comp = compare(df)
    per = T.fraction_summary(comp).set_index("label_fraction")
    assert per.loc[0.05, "n_better"] == 6 and per.loc[1.0, "n_better"] == 0 and (per["m"] == 9).all()
    assert per.loc[0.05, "mean_hl"] > per.loc[1.0, "mean_hl"] + 0.03
    assert comp.loc[per.loc[0.05, "best"], "label_fraction"] == 0.05
