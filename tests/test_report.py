"""report.write_report on synthetic run dirs: the HTML is self-contained and says what the data say."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_history, make_manifest, make_results, write_run_dir

from study import analysis as A
from study.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_RESAMPLES = 499  # keeps each report under a second or two; the statistics are tested in test_analysis


class ReportParser(HTMLParser):
    """Collects img sources, tables (as lists of cell texts), external references and all visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.external: list[str] = []
        self.text: list[str] = []
        self.warning_boxes = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("link", "script") or (tag != "img" and a.get("src")):
            self.external.append(tag)
        if tag == "div" and a.get("class") == "warning":
            self.warning_boxes += 1
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> ReportParser:
    p = ReportParser()
    p.feed(path.read_text(encoding="utf-8"))
    p.full_text = " ".join(p.text)  # type: ignore[attr-defined]
    return p


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, pd.DataFrame]:
    results = make_results(
        n_seeds=8,
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
    md, html_path = write_report(run, n_resamples=N_RESAMPLES)
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
    expected = A.compare_to_baseline(A.tidy_results(results), n_resamples=N_RESAMPLES)
    np.testing.assert_allclose(comp["p_holm"], expected["p_holm"])
    summary = pd.read_csv(run / "summary.csv")
    assert {"regime", "arm", "metric", "n", "mean", "sd", "median", "q1", "q3"} <= set(summary.columns)
    # Corruption's +6 pp with 1 pp noise beats the baseline on all 8 seeds, so its exact Wilcoxon p is the
    # floor 2/2^8 = 0.0078: significant after Holm over the 3 arms of a regime (0.0078 < 0.05/3), but not
    # over all 9 comparisons of the table (needs p < 0.05/9), which is reported as the robustness check.
    corr = comp[comp["arm"] == "corruption"]
    np.testing.assert_allclose(corr["p_wilcoxon"], 2 / 2**8)
    assert corr["significant"].all() and not corr["underpowered"].any()
    assert (corr["p_holm_table"] > 0.05).all()


def test_headlines_tables_and_sections_present(full_run):
    run, _, html_path, _ = full_run
    p = parse(html_path)
    text = p.full_text
    comp = pd.read_csv(run / "comparisons.csv")
    for h in comp["headline"]:
        assert h in text
    assert "Corruption removal vs baseline, patience 10: +" in text
    headers = [t[0] for t in p.tables if t]
    # Table 1 in paper layout: regimes as rows, arm titles as columns.
    table1 = next(t for t in p.tables if t and t[0][:2] == ["Regime", "No self-supervision"])
    assert [row[0] for row in table1[1:]] == ["no early stopping", "patience 3", "patience 10"]
    assert any("Holm p" in h for h in headers)  # the full comparison table
    assert any("Nemenyi CD" in h for h in headers)  # Friedman summary
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
    assert "2 of 32 trials excluded (1 diverged, 1 errored)" in text
    assert "diverged at epoch 7" in text and "RuntimeError: out of memory" in text
    assert "2 near-duplicate pairs" in text and "abc123" in text
    assert "significant (arm better)" in text
    assert "Robustness: with Holm across all 9 comparisons" in text and "at least 9 seeds" in text
    assert p.warning_boxes >= 1 and "possible train/test leakage" in text


def test_minimal_run_renders_na_instead_of_crashing(tmp_path):
    """Only the baseline arm, one seed, all-NaN pretext columns, no history/examples/manifest."""
    results = make_results(n_seeds=1, effects={})
    for c in [
        c for c in results.columns if c.startswith("pretext_") and c not in ("pretext_cached", "pretext_lr")
    ]:
        results[c] = np.nan
    run = write_run_dir(tmp_path / "run", results)
    md, html_path = write_report(run, n_resamples=N_RESAMPLES)
    text = parse(html_path).full_text
    assert "only the baseline arm was run" in text
    assert "history.csv not found" in text and "manifest.json not found" in text
    assert "no rotation arm with finite pretext metrics" in text
    assert "no examples/" in text
    assert pd.read_csv(run / "comparisons.csv").empty
    assert md.is_file()


def test_one_seed_with_arms_is_underpowered_not_crashing(tmp_path):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=1), manifest={"preset": "tiny"})
    _, html_path = write_report(run, n_resamples=N_RESAMPLES)
    p = parse(html_path)
    assert p.warning_boxes >= 1 and "n = 1 seed" in p.full_text
    assert all(src.startswith("data:image/png;base64,") for src in p.images)
    assert "the manifest has no data_check" in p.full_text


def test_unpaired_table_is_reported_not_raised(tmp_path):
    results = make_results(n_seeds=4)
    results = results[~((results["arm"] == "rotation") & (results["seed"] == 3))]
    run = write_run_dir(tmp_path / "run", results)
    _, html_path = write_report(run, n_resamples=N_RESAMPLES)
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
    _, html_path = write_report(run, metric="auc", n_resamples=N_RESAMPLES)
    text = parse(html_path).full_text
    assert "test set has one class" in text and "Data check passed: NO" in text
    assert "not a valid example file" in text
    json.loads((run / "manifest.json").read_text())  # untouched
