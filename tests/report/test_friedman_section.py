"""The report's Friedman section and friedman.csv (issue 26, defect 5): the Iman–Davenport F, comparisons
with the baseline only, no "≈" (a difference not detected is no equivalence), and no test below 5 seeds."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fixtures_results import make_results, write_run_dir
from report_html import parse

from study.report.write import write_report

pytestmark = pytest.mark.usefixtures("private_simulation_cache")


def _report(tmp_path, n_seeds: int) -> tuple[str, object, pd.DataFrame]:
    results = make_results(
        n_seeds=n_seeds, effects={"rotation": 0.0, "missing_patch": 0.01, "corruption": 0.05}, noise_sd=0.01
    )
    run = write_run_dir(tmp_path / "run", results)
    md, html_path = write_report(run)
    return md.read_text(), parse(html_path), pd.read_csv(run / "friedman.csv")


def test_friedman_section_reports_iman_davenport_and_comparisons_with_the_baseline(tmp_path):
    md, p, fr = _report(tmp_path, 8)
    assert "\u2248" not in md and "within one CD" not in md and "Nemenyi" not in md
    table = next(t for t in p.tables if t and "Iman\u2013Davenport F" in t[0])
    header = table[0]
    assert "vs baseline: rank difference (Holm p)" in header and "\u03c7\u00b2" in header
    row = table[1]
    assert row[header.index("Iman\u2013Davenport F")].endswith("(3, 21)")  # df (k-1, (k-1)(n-1))
    assert "Corruption removal \u2212" in row[header.index("vs baseline: rank difference (Holm p)")]
    assert "Dem\u0161ar 2006" in md and "does not mean the arms are equivalent" in md
    assert {"chi2", "f_statistic", "df1", "df2", "p", "control", "vs_control"} <= set(fr.columns)
    assert not {"cliques", "cd", "q_alpha", "statistic"} & set(fr.columns)
    post = json.loads(fr["vs_control"].iloc[0])
    assert sorted(c["arm"] for c in post) == ["corruption", "missing_patch", "rotation"]
    assert (fr["control"] == "baseline").all()


def test_friedman_is_not_run_on_fewer_than_five_seeds_and_the_report_says_why(tmp_path):
    md, p, fr = _report(tmp_path, 4)
    assert fr["p"].isna().all() and fr["f_statistic"].isna().all()
    assert (fr["vs_control"] == "[]").all()
    table = next(t for t in p.tables if t and "Iman\u2013Davenport F" in t[0])
    note = table[1][table[0].index("note")]
    assert "at least 5 complete seeds (this regime has 4)" in note
    assert "\u2248" not in md
    assert "Across all arms: a Friedman test" not in md  # the Method states only tests that ran
