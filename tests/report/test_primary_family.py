"""The report's Holm families: the declared primary cell is the headline family (m = arms), every other cell
is one secondary, exploratory family with its own Holm correction (issue #26)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_results import make_manifest, make_results, write_run_dir
from test_report import section

from study import analysis as A
from study.report.run_analysis import analyse_run
from study.report.write import write_report

EFFECTS = {"rotation": 0.05, "missing_patch": 0.0, "corruption": 0.0}


def _run(tmp_path, regime="patience10", **kw):
    results = make_results(n_seeds=10, effects=EFFECTS, noise_sd=0.01, **kw)
    manifest = make_manifest(results)
    manifest.setdefault("config", {})["analysis"] = {
        "metric": "test_auc",
        "primary_regime": regime,
        "primary_fraction": 1.0,
        "equivalence_margin": 0.02,
        "alpha": 0.05,
    }
    return write_run_dir(tmp_path / "run", results, manifest=manifest)


def test_primary_cell_is_its_own_family_and_the_rest_one_secondary_family(tmp_path):
    a = analyse_run(_run(tmp_path))
    comp = a.comparisons
    assert a.family == "primary"
    primary = comp[comp["holm_family"] == "primary"]
    secondary = comp[comp["holm_family"] == "secondary"]
    assert set(primary["regime"]) == {"patience10"} and len(primary) == 3
    assert set(secondary["regime"]) == {"none", "patience3"} and len(secondary) == 6
    assert (primary["family_size"] == 3).all() and (secondary["family_size"] == 6).all()
    # Holm within 3 is never stricter than within 9; the verdicts test the same p as the table shows.
    assert (primary["p_holm"] <= primary["p_holm_study"] + 1e-12).all()
    by_arm = dict(zip(a.verdicts["arm"], a.verdicts["p_holm_primary"]))
    assert np.allclose(primary["p_holm"], primary["arm"].map(by_arm))
    # The simulated false-positive rate of the secondary family is reported beside the primary one.
    assert 0 < a.null_rates["studywise_secondary"] < 0.1


def test_declared_cell_moves_the_families(tmp_path):
    a = analyse_run(_run(tmp_path, regime="none"))
    primary = a.comparisons[a.comparisons["holm_family"] == "primary"]
    assert set(primary["regime"]) == {"none"}


def test_secondary_section_lists_only_the_secondary_family_as_a_table(tmp_path):
    run = _run(tmp_path)
    md_path, _ = write_report(run)
    md = md_path.read_text()
    head = section(md, "Secondary comparisons (exploratory)")
    assert "Every comparison (secondary, exploratory)" not in md
    table = [line for line in head.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| Where | Arm | Estimate | Holm p | Reading")
    rows = table[1:]  # after the header row (the |---| line does not start with "| ")
    assert len(rows) == 6
    assert not any("patience 10" in r for r in rows)  # the primary cell is answered by the verdicts
    assert "secondary family (m = 6)" in head
    assert not any(line.startswith("- Rotation") for line in head.splitlines())  # no bullets any more
    method = section(md, "Method")
    assert "declared primary cell" in method and "in the secondary family" in method


def test_study_family_keeps_every_comparison_in_one_section(tmp_path):
    run = _run(tmp_path)
    a = analyse_run(run, family="study")
    assert a.family == "study" and set(a.comparisons["holm_family"]) == {"study"}
    md_path, _ = write_report(run, family="study")
    head = section(md_path.read_text(), "Every comparison (secondary, exploratory)")
    assert head.count("\n| ") >= 1 + 9


def test_a_run_without_the_declared_cell_falls_back_to_the_study_family(tmp_path):
    results = make_results(n_seeds=6, effects=EFFECTS, regimes={"none": 0, "patience3": 3})
    manifest = make_manifest(results)
    manifest.setdefault("config", {})["analysis"] = {"metric": "test_auc", "primary_regime": "patience10"}
    run = write_run_dir(tmp_path / "run", results, manifest=manifest)
    a = analyse_run(run)
    assert a.family == "study" and a.verdicts.empty
    assert (a.comparisons["family_size"] == 6).all()


@pytest.mark.parametrize("fractions", [(0.1, 1.0)])
def test_label_fraction_study_primary_cell_is_one_fraction_and_regime(tmp_path, fractions):
    results = make_results(n_seeds=6, effects=EFFECTS, label_fractions=fractions)
    manifest = make_manifest(results)
    manifest.setdefault("config", {})["analysis"] = {
        "metric": "test_auc",
        "primary_regime": "patience10",
        "primary_fraction": 0.1,
    }
    a = analyse_run(write_run_dir(tmp_path / "run", results, manifest=manifest))
    primary = a.comparisons[a.comparisons["holm_family"] == "primary"]
    assert len(primary) == 3 and set(primary[A.LABEL_FRACTION]) == {0.1}
    assert (a.comparisons["holm_family"] == "secondary").sum() == 15
