"""report.write_report on synthetic run dirs: the HTML is self-contained and says what the data say."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_history, make_manifest, make_results, write_run_dir
from report_html import ReportParser, parse

from study import analysis as A
from study import stats as ST
from study.report import formatting as F
from study.report import pretext_tables as PT
from study.report import results_table as R
from study.report import tables as T
from study.report.run_analysis import analyse_run
from study.report.write import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("private_simulation_cache")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, pd.DataFrame]:
    results = make_results(
        n_seeds=10,
        effects={"rotation": 0.0, "missing_patch": 0.01, "corruption": 0.06},
        noise_sd=0.01,
        status={("rotation", 2): "diverged", ("missing_patch", 5): "error"},
    )
    run = write_run_dir(
        tmp_path_factory.mktemp("run"),
        results,
        history=make_history(results, epochs=6),
        manifest=make_manifest(results),
        example_tasks=("missing_patch", "corruption"),
    )
    # The study-wide Holm family (`study report --family study`); the default primary family has its own tests.
    md, html_path = write_report(run, family="study")
    return run, md, html_path, results


def test_files_written(full_run):
    run, md, html_path, _ = full_run
    assert md == run / "report.md" and html_path == run / "report.html"
    assert md.read_text().startswith("# Self-supervised pre-training")
    for name in ("summary.csv", "comparisons.csv", "friedman.csv", "excluded.csv"):
        assert (run / name).is_file()
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert {
        "forest.png",
        "paired_seeds.png",
        "mean_ranks.png",
        "learning_curves.png",
        "examples_missing_patch.png",
        "examples_corruption.png",
    } <= set(pngs)
    assert "figures/forest.png" in md.read_text()


def test_html_is_self_contained_with_decodable_pngs(full_run):
    _, _, html_path, _ = full_run
    p = parse(html_path)
    assert len(p.images) >= 6
    for src in p.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert p.external == []  # no external CSS/JS or linked resources


def test_csvs_match_the_analysis(full_run):
    run, _, _, results = full_run
    comp = pd.read_csv(run / "comparisons.csv")
    assert len(comp) == 9 and set(comp["arm"]) == {"rotation", "missing_patch", "corruption"}
    expected = A.compare_to_baseline(R.tidy_results(results))
    np.testing.assert_allclose(comp["p_holm"], expected["p_holm"])
    summary = pd.read_csv(run / "summary.csv")
    assert {"regime", "arm", "metric", "n", "mean", "sd", "median", "q1", "q3"} <= set(summary.columns)
    # Corruption's +6 pp with 1 pp noise beats the baseline on all 10 seeds, so its exact Wilcoxon p is the
    # floor 2/2^10 = 0.00098: significant after Holm over all 9 comparisons of the study (the default
    # family; < 0.05/9) and per regime.
    corr = comp[comp["arm"] == "corruption"]
    np.testing.assert_allclose(corr["p_wilcoxon"], 2 / 2**10)
    assert corr["significant"].all() and not corr["underpowered"].any()
    assert (corr["holm_family"] == "study").all() and (corr["p_holm_regime"] < 0.05).all()
    # The planning range and both intervals are in the CSV.
    for col in ("hl_estimate", "hl_ci_low", "hl_ci_high", "mean_ci_low", "mean_ci_high", "seeds_80_min"):
        assert col in comp


def test_headlines_tables_and_sections_present(full_run):
    run, _, html_path, _ = full_run
    p = parse(html_path)
    text = p.full_text
    # Every comparison is one row of the section's table (the sentence of each stays in comparisons.csv).
    every = table_with(p, "Reading")
    assert every[0][:5] == ["Where", "Arm", "Estimate", "Holm p", "Reading"] and len(every) == 1 + 9
    corr = [r for r in every[1:] if r[1] == "Corruption removal"]
    assert len(corr) == 3 and all(r[4] == "significant, arm better" for r in corr)
    assert all(r[2].startswith("+") for r in corr)
    headers = [t[0] for t in p.tables if t]
    # Table 1 in paper layout: regimes as rows, arm titles as columns.
    table1 = next(t for t in p.tables if t and t[0][:2] == ["Regime", "No self-supervision"])
    assert [row[0] for row in table1[1:]] == ["no early stopping", "patience 3", "patience 10"]
    assert any("Holm p (study)" in h for h in headers)  # the full comparison table
    assert any("Iman\u2013Davenport F" in h for h in headers)  # Friedman summary
    assert any("SSIM (mean over images)" in h for h in headers)  # Table 3
    assert any("MSE (angle/360)" in h for h in headers)  # Table 2
    for section in (
        "Excluded trials",
        "Data and leakage check",
        "Run manifest",
        "Stop epochs",
        "Learning curves",
    ):
        assert section in text
    assert "2 of 40 trials excluded (1 diverged, 1 errored)" in text
    assert "diverged at epoch 7" in text and "RuntimeError: out of memory" in text
    assert "2 near-duplicate pairs" in text and "abc123" in text
    assert "Robustness: with Holm per regime instead (over the 3 arm(s) of each regime; study-wise" in text
    assert p.warning_boxes >= 1 and "possible train/test leakage" in text


def test_minimal_run_renders_na_instead_of_crashing(tmp_path):
    """Only the baseline arm, one seed, all-NaN pretext columns, no history/examples/manifest."""
    results = make_results(n_seeds=1, effects={})
    for c in [
        c for c in results.columns if c.startswith("pretext_") and c not in ("pretext_cached", "pretext_lr")
    ]:
        results[c] = np.nan
    run = write_run_dir(tmp_path / "run", results)
    md, html_path = write_report(run)
    text = parse(html_path).full_text
    assert "only the baseline arm was run" in text
    assert "history.csv not found" in text and "manifest.json not found" in text
    assert "no rotation arm with finite pretext metrics" in text
    assert "no examples/" in text
    assert pd.read_csv(run / "comparisons.csv").empty
    assert md.is_file()


def test_one_seed_with_arms_is_underpowered_not_crashing(tmp_path):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=1), manifest={"preset": "tiny"})
    _, html_path = write_report(run)
    p = parse(html_path)
    assert p.warning_boxes >= 1 and "signed-rank CI n/a (n = 1)" in p.full_text
    assert all(src.startswith("data:image/png;base64,") for src in p.images)
    assert "the manifest has no data_check" in p.full_text


def test_unpaired_table_is_reported_not_raised(tmp_path):
    results = make_results(n_seeds=4)
    results = results[~((results["arm"] == "rotation") & (results["seed"] == 3))]
    run = write_run_dir(tmp_path / "run", results)
    _, html_path = write_report(run)
    text = parse(html_path).full_text
    assert "not paired by seed" in text and "rotation" in text and "seed(s) 3" in text
    with pytest.raises(A.PairingError):
        write_report(run, strict=True)


def test_missing_results_is_a_clear_error(tmp_path):
    with pytest.raises(A.ResultsTableError, match="run the study first"):
        write_report(tmp_path)


def test_manifest_with_odd_values_and_bad_examples(tmp_path):
    results = make_results(n_seeds=3)
    manifest = make_manifest(results)
    del manifest["versions"]
    manifest["data_check"] = {"ok": False, "problems": ["test set has one class"], "near_duplicates": 0}
    run = write_run_dir(tmp_path / "run", results, manifest=manifest)
    (run / "examples").mkdir()
    (run / "examples" / "corruption_seed0.npz").write_bytes(b"not an npz")
    _, html_path = write_report(run, metric="auc")
    text = parse(html_path).full_text
    assert "test set has one class" in text and "Data check passed: NO" in text
    assert "not a valid example file" in text
    json.loads((run / "manifest.json").read_text())  # untouched


# ------------------------------------------------------------------ pretext references, probe, robustness


def section(md: str, title: str) -> str:
    """The Markdown text of the ``## title`` section (up to the next ``## ``)."""
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 3)
    return md[start : end if end >= 0 else len(md)]


def table_with(p: ReportParser, header: str) -> list[list[str]]:
    return next(t for t in p.tables if t and header in t[0])


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """8 seeds; rotation's pretext never beats its constant reference, missing patch fails on 3 of 8 seeds
    (a minority), corruption always learns; probe AUC +8 pp for corruption, no shift otherwise."""
    results = make_results(
        n_seeds=8,
        effects={"rotation": 0.0, "missing_patch": 0.01, "corruption": 0.06},
        noise_sd=0.01,
        references=True,
        not_learned={"rotation": range(8), "missing_patch": (0, 1, 2)},
        probe={"corruption": 0.08},
    )
    run = write_run_dir(
        tmp_path_factory.mktemp("refrun"),
        results,
        history=make_history(results, epochs=4),
        manifest=make_manifest(results),
        example_tasks=("missing_patch", "corruption"),
    )
    write_report(run)
    return run, results


def test_pretext_tables_show_model_vs_reference(ref_run):
    run, results = ref_run
    p = parse(run / "report.html")
    tables = [t for t in p.tables if t and "Best reference" in t[0]]
    assert len(tables) == 2  # Table 2 (rotation) and Table 3 (image tasks)
    head = tables[0][0]
    rows = {
        (r[head.index("Self-supervision method")], r[head.index("Metric")]): r for t in tables for r in t[1:]
    }
    col = {name: head.index(name) for name in head}
    rot = rows[("Rotation prediction", "circular AAD (\u00b0) (headline)")]
    assert rot[col["Model better"]] == "learned on 0 of 8 seeds"
    assert rot[col["Model / reference"]] == "1.03" and rot[col["Best reference"]].startswith("constant: ")
    per_seed = results[(results["arm"] == "rotation") & (results["regime"] == "none")]
    assert rot[col["Model"]].startswith(f"{per_seed['pretext_aad_circ_deg'].mean():.4g} \u00b1 ")
    mp = rows[("Missing patch", "MSE inside the hole (headline)")]
    assert mp[col["Model better"]] == "learned on 5 of 8 seeds"
    assert mp[col["Best reference"]].startswith("mean fill: ")
    # Missing patch also has whole-image, SSIM, composite and classical-inpainter rows.
    mp_metrics = [m for (arm, m) in rows if arm == "Missing patch"]
    assert mp_metrics[0].endswith("(headline)") and len(mp_metrics) == 6
    assert "SSIM, composite" in mp_metrics and "MSE, composite (model fills the hole only)" in mp_metrics
    bih = rows[("Missing patch", "MSE inside the hole, biharmonic subsample (16 images)")]
    assert bih[col["Model better"]] == "better on 0 of 8 seeds" and bih[col["Model / reference"]] == "1.29"
    corr = rows[("Corruption removal", "MSE, whole image (headline)")]
    assert corr[col["Model better"]] == "learned on 8 of 8 seeds" and corr[col["Model / reference"]] == "0.5"
    assert ("Corruption removal", "MSE on the swapped pixels") in rows
    csv = pd.read_csv(run / "pretext_reference.csv")
    head_rows = csv[csv["headline"]].set_index("arm")
    assert head_rows.loc["rotation", "n_better"] == 0 and head_rows.loc["corruption", "n_better"] == 8
    assert head_rows.loc["missing_patch", "reference"] == "meanfill"


def test_headlines_of_a_pretext_that_did_not_learn_say_so(ref_run):
    run, _ = ref_run
    md = (run / "report.md").read_text()
    comp = pd.read_csv(run / "comparisons.csv")
    rows = [line.split(" | ") for line in section(md, "Secondary comparisons (exploratory)").splitlines()]
    head = next(r for r in rows if "Pretext learned" in r[-1])
    at = head.index("Arm")
    table = [r for r in rows if len(r) == len(head) and r[at] in ("Rotation prediction", "Missing patch")]
    assert len(table) == 4  # two secondary regimes each
    for r in table:  # missing patch failed on a minority only: its cell stays empty
        assert r[-1].strip(" |") == ("0 of 8 seeds" if r[at] == "Rotation prediction" else "")
    learned = comp.drop_duplicates("arm").set_index("arm")["pretext_learned_seeds"]
    assert learned.to_dict() == {"rotation": "0/8", "missing_patch": "5/8", "corruption": "8/8"}
    headline = section(md, "Secondary comparisons (exploratory)")
    assert (
        "Rotation prediction did not beat a constant prediction on 8 of 8 seeds: its fine-tune comparison "
        "tests the pretext weights of a task that learned nothing" in headline
    )
    assert "Missing patch did not beat" not in md


def test_probe_section_pairs_arms_with_the_baseline(ref_run):
    run, results = ref_run
    from scipy import stats

    md = (run / "report.md").read_text()
    probe_md = section(md, "Linear probe (frozen encoder)")
    assert "n/a" not in probe_md
    probe = pd.read_csv(run / "probe.csv").set_index("arm")
    per_trial = results[results["regime"] == "none"].pivot(index="seed", columns="arm", values="probe_auc")
    d = per_trial["corruption"] - per_trial["baseline"]
    assert probe.loc["corruption", "mean_diff_vs_baseline"] == pytest.approx(d.mean())
    assert probe.loc["corruption", "p_wilcoxon"] == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)
    assert probe.loc["baseline", "mean"] == pytest.approx(per_trial["baseline"].mean())
    assert np.isnan(probe.loc["baseline", "p_holm"])
    p_holm = ST.holm(probe.loc[["rotation", "missing_patch", "corruption"], "p_wilcoxon"].to_numpy())
    np.testing.assert_allclose(probe.loc[["rotation", "missing_patch", "corruption"], "p_holm"], p_holm)
    # +8 pp on every seed: the exact Wilcoxon floor 2/2^8, significant after Holm over 3 arms.
    assert probe.loc["corruption", "p_holm"] < 0.05
    p = parse(run / "report.html")
    comp = table_with(p, "n pairs")
    assert [r[0] for r in comp[1:]] == ["Rotation prediction", "Missing patch", "Corruption removal"]
    assert comp[3][comp[0].index("\u0394 (pp)")] == f"+{100 * d.mean():.2f}"
    assert "Linear probe:" in section(md, "Method")


def test_report_without_reference_or_probe_columns_makes_no_claim(full_run):
    run, md_path, _, _ = full_run
    md = md_path.read_text()
    assert "learned on" not in md and "did not beat" not in md
    assert md.count("recorded no learning-free reference") == 2  # Tables 2 and 3
    assert "probe_auc" in section(md, "Linear probe (frozen encoder)")
    assert "Linear probe:" not in section(md, "Method") and "learned on a seed" not in section(md, "Method")
    assert "Friedman test per regime" in section(md, "Method")
    comp = pd.read_csv(run / "comparisons.csv")
    assert comp["pretext_learned_seeds"].isna().all()


def test_method_describes_only_the_tests_that_ran(tmp_path):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=3, effects={}))
    write_report(run)
    method = section((run / "report.md").read_text(), "Method")
    assert "No paired comparison was computed (only the baseline arm was run)" in method
    assert "Wilcoxon" not in method and "Friedman" not in method and "probe" not in method


def test_alpha_reaches_every_sentence(tmp_path):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=6, noise_sd=0.02), manifest={"preset": "x"})
    write_report(run, alpha=0.1)
    md = (run / "report.md").read_text()
    assert "Holm over m = 6, \u03b1 = 0.1; simulated" in md  # the secondary family: 3 arms x 2 regimes
    # The note that the report's alpha overrides the declared one names both.
    assert "overrides the declared primary analysis" in md
    md = "\n".join(line for line in md.splitlines() if "overrides the declared primary analysis" not in line)
    assert "\u03b1 = 0.05" not in md and "0.05" not in section(md, "Method")
    assert "90 % signed-rank CI" in md and "Intervals (90 %" in md and "BCa" not in md


def test_history_with_hex_node_id_still_gives_learning_curves(tmp_path):
    results = make_results(n_seeds=3)
    history = make_history(results, epochs=4)
    history["node_id"] = "6730d524694aa9a184911a8dc64cfaafaa41e65ed0bdfb753d893a70"
    history.loc[::2, "node_id"] = "12e4"  # a hex id that also parses as a number
    history["pid"] = 3286
    run = write_run_dir(tmp_path / "run", results, history=history)
    loaded = R.load_history(run)
    assert loaded["node_id"].tolist()[:2] == ["12e4", history["node_id"].iloc[1]]
    assert loaded["pid"].dtype == float and loaded["val_auc"].dtype == float
    write_report(run)
    md = (run / "report.md").read_text()
    assert "must be numeric" not in md and "n/a" not in section(md, "Learning curves")
    assert (run / "figures" / "learning_curves.png").is_file()


def test_history_with_a_bad_metric_value_is_still_an_error(tmp_path):
    history = make_history(make_results(n_seeds=2), epochs=2).astype({"val_loss": object})
    history.loc[0, "val_loss"] = "abc"
    history.to_csv(tmp_path / "history.csv", index=False)
    with pytest.raises(A.ResultsTableError, match="'val_loss' must be numeric"):
        R.load_history(tmp_path)


def _notes(md: str) -> list[str]:
    """The report's note boxes, but the one saying that a run without a manifest declared no primary analysis."""
    return [line for line in md.splitlines() if "Note:" in line and "primary analysis" not in line]


def test_rotation_examples_show_angles_and_never_a_note(tmp_path):
    results = make_results(n_seeds=2)
    run = write_run_dir(tmp_path / "run", results, example_tasks=("corruption",))
    np.savez(run / "examples" / "rotation_seed0.npz")  # what the runner writes for a task without examples
    np.savez(run / "examples" / "missing_patch_seed0.npz")  # a diverged pretext's empty file
    write_report(run)
    md = (run / "report.md").read_text()
    assert _notes(md) == [] and "could not be shown" not in md
    assert not (run / "figures" / "examples_rotation.png").exists()
    # With recorded angles, the rotated inputs are shown, titled with true and predicted angle.
    x = np.zeros((3, 16, 16, 3), np.uint8)
    np.savez(
        run / "examples" / "rotation_seed1.npz",
        inputs=x,
        angle_true_deg=np.array([10.0, 200.0, 90.0]),
        angle_pred_deg=np.array([80.0, 190.0, 95.0]),
    )
    write_report(run)
    md = (run / "report.md").read_text()
    assert _notes(md) == []
    assert "figures/examples_rotation.png" in md and (run / "figures" / "examples_rotation.png").is_file()
    assert "Rotation prediction: rotated inputs with true and predicted angle" in md


def test_html_scrolls_tables_and_folds_the_config(full_run):
    _, md_path, html_path, _ = full_run
    page = html_path.read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert (
        page.count("<table>") == page.count('<div class="table-scroll" style="overflow-x:auto"><table>') > 5
    )
    details = html.unescape(page.split("<details>", 1)[1].split("</details>", 1)[0])
    assert details.startswith("<summary>The run's config (JSON, 15 lines)</summary><pre>{")
    assert '"finetune_epochs": 30' in details
    md_titles = [line[3:] for line in md_path.read_text().splitlines() if line.startswith("## ")]
    html_titles = [html.unescape(t) for t in re.findall(r"<h2>(.*?)</h2>", page)]
    assert md_titles == html_titles and "Linear probe (frozen encoder)" in md_titles


def test_forest_plot_keeps_raw_units_for_non_fraction_metrics(tmp_path, monkeypatch):
    from study.report import plots

    scales = []
    real = plots.forest_plot

    def spy(comp, xlabel, scale=100.0, alpha=0.05, **kw):
        scales.append(scale)
        return real(comp, xlabel, scale=scale, alpha=alpha, **kw)

    monkeypatch.setattr(plots, "forest_plot", spy)
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=4))
    write_report(run, metric="stop_epoch")  # no direction: no verdicts, one forest plot
    write_report(run, metric="auc")  # the verdicts' plot, then the forest plot of every comparison
    assert scales == [1.0, 100.0, 100.0]


def test_reference_table_finds_the_best_reference_without_the_runners_summary_columns():
    """Only per-reference columns: the best one per seed is derived (lower MSE, higher SSIM), and the verdict
    is read from the values."""
    raw = make_results(n_seeds=4, references=True, not_learned={"missing_patch": (0,)})
    summary_cols = [
        c
        for c in raw
        if c
        in ("pretext_ref_region_mse", "pretext_ref_mse_mean", "pretext_ref_ssim_mean", "pretext_ref_name")
        or c in ("pretext_learned", "pretext_headline")
    ]
    refs = PT.pretext_reference_table(R.tidy_results(raw.drop(columns=summary_cols)))
    mp = refs[refs["arm"] == "missing_patch"].set_index("metric")
    assert mp.index[0] == "region_mse" and mp.loc["region_mse", "headline"]  # the task's default headline
    assert mp.loc["region_mse", "reference"] == "meanfill"  # 1,500 beats the identity's 20,000
    assert mp.loc["ssim_mean", "reference"] == "meanfill"  # 0.85 beats 0.8: higher is better
    assert (mp.loc["region_mse", "n_better"], mp.loc["region_mse", "n_judged"]) == (3, 4)
    per_seed = raw[(raw["arm"] == "missing_patch") & (raw["regime"] == "none")]
    assert mp.loc["region_mse", "ref_mean"] == pytest.approx(
        per_seed["pretext_ref_meanfill_region_mse"].mean()
    )
    ratio = per_seed["pretext_region_mse"] / per_seed["pretext_ref_meanfill_region_mse"]
    assert mp.loc["region_mse", "ratio_mean"] == pytest.approx(ratio.mean())
    learned = PT.pretext_learned(refs).set_index("arm")
    assert (
        learned.loc["missing_patch", "learned_seeds"] == "3/4"
        and not learned.loc["missing_patch", "majority_failed"]
    )


# ----------------------------------------------------------------------------------------------- issue 14


def test_method_names_interval_kinds_family_and_its_studywise_rate(tmp_path):
    """Items 2 and 4: the Method paragraph says which intervals are shown, which family Holm uses and the
    study-wise false-positive rate it implies (from the simulation); with the per-regime family the
    robustness paragraph says when the study-wide check cannot reject, and never "0 of 0" (item 8)."""
    from study.report import simulate as S

    run = write_run_dir(tmp_path / "run", make_results(n_seeds=8, noise_sd=0.02))
    write_report(run, family="study")
    md = (run / "report.md").read_text()
    method = section(md, "Method")
    rates = S.null_rejection_rates(8, 3, 3)
    assert "Hodges\u2013Lehmann estimate" in method and "exact signed-rank confidence interval" in method
    assert "t-interval of the mean difference" in method and "BCa" not in md
    assert "Holm-corrected across all m = 9 comparisons of the study" in method
    rate = {k: F.sim_rate(rates[k], rates["n_sim"]) for k in ("studywise_study", "studywise_regime")}
    assert f"{rate['studywise_study']} with this family" in method
    assert f"{rate['studywise_regime']} with Holm per regime" in method
    assert "With 8 seeds no comparison can be significant in this family (it needs at least 9)" in method
    write_report(run, family="regime")
    md = (run / "report.md").read_text()
    assert f"{rate['studywise_regime']} with this family" in section(md, "Method")
    head = section(md, "Every comparison (secondary, exploratory)")
    assert "0 of 0" not in head
    assert "more than this run's 8, so it cannot reject here" in head
    # Item 3: the planning range is the headline procedure's, not a paired t-test's.
    assert "Power planning: seeds the headline procedure (two-sided exact Wilcoxon, Holm over m = 3" in head
    assert "paired t-test would need" not in md
    p = parse(run / "report.html")
    comp_table = table_with(p, "seeds for 80 % power (range)")
    assert "95 % signed-rank CI (HL)" in comp_table[0] and "95 % t-CI (mean)" in comp_table[0]


def test_forest_plot_default_scale_follows_the_metric():
    """Item 7: without an explicit scale, a non-fraction metric (stop epoch) is drawn in its own units."""
    from study.report import plots

    df = R.tidy_results(make_results(n_seeds=8))
    comp = T.comparison_table(A.compare_to_baseline(df, metric="stop_epoch"), 0.05, False)
    fig = plots.forest_plot(comp, "stop epoch")
    crosses = [ln for ln in fig.axes[0].lines if ln.get_marker() == "x"]
    np.testing.assert_allclose([ln.get_xdata()[0] for ln in crosses], comp["mean_diff"])
    title = fig.axes[0].get_title()
    assert "Hodges\u2013Lehmann" in title and "95 % exact signed-rank CI" in title


def test_underpowered_warnings_with_one_reason_are_one_line():
    from study.report.sections_headline import grouped_warnings

    under = pd.DataFrame(
        {
            "warning": [
                "Rotation vs baseline, patience 3: 2 paired seeds. Cannot be significant.",
                "Missing patch vs baseline, patience 3: 2 paired seeds. Cannot be significant.",
                "Corruption vs baseline, patience 3: 5 paired seeds. Cannot be significant.",
            ]
        }
    )
    lines = grouped_warnings(under, 3)
    assert lines == [
        "Rotation vs baseline, patience 3; Missing patch vs baseline, patience 3: 2 paired seeds. "
        "Cannot be significant.",
        "Corruption vs baseline, patience 3: 5 paired seeds. Cannot be significant.",
    ]
    assert grouped_warnings(under.iloc[:2], 2) == [
        "All 2 comparisons: 2 paired seeds. Cannot be significant."
    ]


# ------------------------------------------------------------------------ issue 15: label efficiency

FRACTIONS = (0.05, 0.2, 1.0)


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """12 seeds x 3 label fractions; corruption +6 pp and missing patch +3 pp at 5 % labels, +1 / +0.5 pp
    otherwise; rotation's seed 2 diverged (every fraction); references, probe, history with the column."""
    results = make_results(
        n_seeds=12,
        effects={"rotation": 0.0, "missing_patch": 0.005, "corruption": 0.01},
        noise_sd=0.01,
        label_fractions=FRACTIONS,
        fraction_effects={0.05: {"corruption": 0.06, "missing_patch": 0.03}},
        references=True,
        probe={"corruption": 0.05},
        status={("rotation", 2): "diverged"},
    )
    run = write_run_dir(
        tmp_path_factory.mktemp("multi"),
        results,
        history=make_history(results, epochs=3),
        manifest=make_manifest(results),
        example_tasks=("corruption",),
    )
    write_report(run, family="study")  # the study-wide family; primary: test_primary_family.py
    return run, results


def test_label_efficiency_figure_is_written_linked_and_embedded(multi_run):
    run, _ = multi_run
    md = (run / "report.md").read_text()
    assert (run / "figures" / "label_efficiency.png").is_file()
    body = section(md, "Label efficiency: test AUC vs label fraction")
    assert "](figures/label_efficiency.png)" in body and "one panel per early-stopping regime" in body
    p = parse(run / "report.html")
    figures = re.findall(
        r'<img src="data:image/png;base64,([^"]+)" alt="Test AUC vs label fraction',
        html.unescape((run / "report.html").read_text()),
    )
    assert len(figures) == 1 and base64.b64decode(figures[0]).startswith(PNG_MAGIC)
    eff = pd.read_csv(run / "label_efficiency.csv")
    assert len(eff) == 3 * 3 * 4 and {"ci_low", "ci_high", "mean"} <= set(eff.columns)
    # The differences per fraction: regime x arm rows, one column per fraction, significance starred.
    table = table_with(p, "100 %")
    assert table[0] == ["Regime", "Arm", "5 %", "20 %", "100 %"] and len(table) == 1 + 9
    corr = next(r for r in table if r[:2] == ["no early stopping", "Corruption removal"])
    assert corr[2].startswith("+6.") and corr[2].endswith(" *") and not corr[4].endswith("*")


def test_summary_says_per_fraction_whether_an_arm_beats_the_baseline(multi_run):
    run, _ = multi_run
    head = section((run / "report.md").read_text(), "Every comparison (secondary, exploratory)")
    comp = pd.read_csv(run / "comparisons.csv")
    assert len(comp) == 27 and (comp["family_size"] == 27).all()
    assert "- 5 % labels: 6 of 9 comparisons significant with the arm better (Holm over all m = 27 " in head
    assert "Corruption removal, no early stopping: +6." in head and "95 % signed-rank CI [" in head
    assert (
        "- 100 % labels: no arm beats the baseline (Holm over all m = 27 comparisons of the study)." in head
    )
    assert "most favourable" not in head  # picked after looking (tests/report/test_fraction_trend.py)
    assert "the gain shrinks as labels are added, the pattern the self-supervised literature reports" in head
    rows = [r.split(" | ") for r in head.splitlines() if r.startswith("| 5 % labels, patience 10 |")]
    corr = next(r for r in rows if r[1] == "Corruption removal")
    assert corr[2].startswith("+") and corr[4].rstrip(" |") == "significant, arm better"
    assert "Robustness: with Holm per regime and label fraction instead" in head


def test_method_states_the_family_over_fractions_and_its_size(multi_run):
    from study.report import simulate as S

    run, _ = multi_run
    md = (run / "report.md").read_text()
    method = section(md, "Method")
    assert (
        "Holm-corrected across all m = 27 comparisons of the study (3 self-supervised arm(s) \u00d7 3 regime(s) "
        "\u00d7 3 label fractions)" in method
    )
    assert "separately in each regime of each label fraction (paired on seed and fraction" in method
    rates = S.null_rejection_rates(12, 3, 9)
    assert f"{F.sim_rate(rates['studywise_study'], rates['n_sim'])} with this family" in method
    assert f"3 arm(s) \u00d7 3 regime(s) \u00d7 3 label fractions, {S.N_SIM_NULL:,} null studies" in method
    assert "\u00d7 3 label fractions (5 %, 20 %, 100 % of the training labels" in md.split("\n## ", 1)[0]


def test_tables_gain_a_labels_column_and_pretext_is_counted_once(multi_run):
    run, _ = multi_run
    p = parse(run / "report.html")
    table1 = next(t for t in p.tables if t and t[0][:3] == ["Labels", "Regime", "No self-supervision"])
    assert [r[0] for r in table1[1:]] == ["5 %"] * 3 + ["20 %"] * 3 + ["100 %"] * 3
    assert table_with(p, "Holm p (study)")[0][:3] == ["Labels", "Regime", "Arm"]
    assert table_with(p, "Iman\u2013Davenport F")[0][:2] == ["Labels", "Regime"]
    assert table_with(p, "probe AUC (%)")[0][:2] == ["Labels", "Arm"]
    assert table_with(p, "n pairs")[0][:2] == ["Labels", "Arm"]
    # One pretext per arm x seed, shared by the fractions: 12 seeds, not 36.
    refs = [t for t in p.tables if t and "Best reference" in t[0]]
    assert refs and all(r[t[0].index("n seeds")] == "12" for t in refs for r in t[1:])
    pretext = [t for t in p.tables if t and t[0][:2] == ["Self-supervision method", "n seeds"]]
    assert pretext and all(r[1] == "12" for t in pretext for r in t[1:])
    md = (run / "report.md").read_text()
    assert "5 % labels, patience 3: seed 2 dropped from the Rotation prediction vs baseline comparison" in md
    assert "Validation loss and AUC per fine-tune epoch (one row per label fraction)" in md
    probe = pd.read_csv(run / "probe.csv")
    assert len(probe) == 12 and probe["p_holm"].notna().sum() == 9


def test_single_fraction_reports_have_no_fraction_column_or_sentence(full_run):
    _, md_path, html_path, _ = full_run
    p = parse(html_path)
    assert not any("Labels" in t[0] for t in p.tables if t)
    md = md_path.read_text()
    assert "label fraction" not in md and "% labels" not in md and "Label efficiency" not in md
    assert not (md_path.parent / "label_efficiency.csv").exists()


def test_results_without_the_column_report_as_one_fraction_exactly_as_with_it(tmp_path):
    """An older results.csv (no label_fraction) and one whose column says 1.0 give the same report."""
    kw = {"n_seeds": 8, "effects": {"rotation": 0.0, "corruption": 0.03}, "noise_sd": 0.01, "probe": {}}
    old, new = make_results(**kw), make_results(**kw, label_fractions=[1.0])
    assert "label_fraction" not in old and (new["label_fraction"] == 1.0).all()
    reports = []
    for name, results in (("old", old), ("new", new)):
        run = write_run_dir(tmp_path / name / "run", results, history=make_history(results, epochs=2))
        write_report(run)
        reports.append((run / "report.md").read_text())
        assert pd.read_csv(run / "comparisons.csv")["label_fraction"].eq(1.0).all()
    assert reports[0] == reports[1]


def test_a_single_fraction_below_one_is_named_once(tmp_path):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=3, label_fractions=[0.1]))
    write_report(run)
    md = (run / "report.md").read_text()
    assert "; fine-tuned on 10 % of the training labels." in md and "Labels" not in md
    assert "% labels," not in md  # headlines as in any one-fraction study


def test_history_without_the_column_takes_the_fraction_from_results(tmp_path):
    results = make_results(n_seeds=3, label_fractions=(0.2, 1.0))
    history = make_history(results, epochs=2).drop(columns="label_fraction")
    run = write_run_dir(tmp_path / "run", results, history=history)
    analysis = analyse_run(run)
    assert set(analysis.curves["label_fraction"]) == {0.2, 1.0}


def test_label_efficiency_intervals_on_few_seeds_stay_in_the_metrics_range(tmp_path, monkeypatch):
    from study.report import plots

    drawn = []
    real = plots.label_efficiency_plot
    monkeypatch.setattr(
        plots, "label_efficiency_plot", lambda lv, *a, **k: drawn.append(lv) or real(lv, *a, **k)
    )
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=2, label_fractions=(0.5, 1.0)))
    write_report(run)
    eff = pd.read_csv(run / "label_efficiency.csv")
    assert (eff["ci_high"] > 1).any()  # the CSV keeps the t-interval as computed
    assert drawn[0]["ci_high"].max() <= 1 and drawn[0]["ci_low"].min() >= 0
    assert "intervals cut at 0 and 100 %" in (run / "report.md").read_text()


def test_a_registered_task_with_a_table_of_its_own_gets_it_and_unregistered_ones_are_named(
    tmp_path, monkeypatch
):
    """Tables come from the registry (`PretextTask.table`): a task with its own table is reported in it (and
    its CSV written), the paper's Tables 2 and 3 stay; a task not registered where the report is made is
    named instead of silently left out."""
    import dataclasses

    from study.tasks import registry as pretext

    monkeypatch.setattr(pretext, "TASKS", dict(pretext.TASKS))
    tiles = dataclasses.replace(
        pretext.get_task("corruption"), name="tiles", title="Tile order", table="tiles"
    )
    pretext.register(tiles)
    results = make_results(n_seeds=3)
    for old, new in (("corruption", "tiles"), ("rotation", "jigsaw")):
        results.loc[results["task"] == old, ["arm", "task"]] = new
    run = write_run_dir(tmp_path / "run", results)
    md, _ = write_report(run)
    text = md.read_text()
    assert "### Pretext: Tile order" in text and "### Table 3: missing patch and corruption removal" in text
    assert "Pretext metrics of jigsaw are not tabulated" in text
    tables = pd.read_csv(run / "pretext_tiles.csv")
    assert set(tables["arm"]) == {"tiles"} and "tiles" not in set(
        pd.read_csv(run / "pretext_image.csv")["arm"]
    )
    # the next report of a run without that arm leaves no stale table behind
    results.loc[results["task"] == "tiles", ["arm", "task"]] = "corruption"
    write_run_dir(run, results)
    write_report(run)
    assert not (run / "pretext_tiles.csv").exists()
