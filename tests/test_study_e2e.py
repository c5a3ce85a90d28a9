"""End-to-end: the smoke study through Ray Tune (few, real, slow)."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from study.run.runner import run_study
from study.spec.presets import get_preset
from study.spec.resolve import apply_flags, finalize_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_smoke_study_writes_every_arm_regime_and_seed(smoke_run):
    preset = get_preset("smoke")
    results = pd.read_csv(smoke_run / "results.csv")
    assert set(results["arm"]) == {"baseline", "rotation", "missing_patch", "corruption"}
    assert set(results["regime"]) == {"none", "patience1", "patience2"}
    assert set(results["seed"]) == set(preset.seeds)
    assert len(results) == 4 * 3 * len(preset.seeds)
    assert (results["status"] == "ok").all(), results[["arm", "seed", "status", "error"]]
    assert results["test_auc"].between(0, 1).all()
    # The no-early-stopping regime trains every epoch; early stopping never trains more.
    none = results[results["regime"] == "none"]
    assert (none["stop_epoch"] == preset.base.finetune_epochs).all()
    assert (results["stop_epoch"] <= preset.base.finetune_epochs).all()
    # Pretext metrics are filled for the arm that produced them only.
    rot = results[results["arm"] == "rotation"]
    assert rot["pretext_aad_deg"].notna().all()
    assert results[results["arm"] == "baseline"]["pretext_aad_deg"].isna().all()
    assert results[results["arm"] == "corruption"]["pretext_ssim_mean"].between(-1, 1).all()


def test_smoke_study_history_manifest_and_report(smoke_run):
    history = pd.read_csv(smoke_run / "history.csv")
    assert set(history["phase"]) == {"pretext", "finetune"}
    preset = get_preset("smoke")
    per_trial = history[history["phase"] == "finetune"].groupby("trial_id")["epoch"].max()
    assert (per_trial == preset.base.finetune_epochs).all() and len(per_trial) == 4 * len(preset.seeds)
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["data_fingerprint"] and manifest["versions"]["ray"].startswith("2.60")
    assert manifest["n_trials"] == 4 * len(preset.seeds) and manifest["errors"] == []
    assert (smoke_run / "report.html").exists() and (smoke_run / "report.md").exists()
    # TensorBoard event files from Ray Tune's TBX logger, for `tensorboard --logdir RUN_DIR`.
    assert list(smoke_run.rglob("events.out.tfevents.*"))


def test_pretext_is_trained_once_when_trials_share_it(ray_session, tmp_path, monkeypatch):
    """Two arms differing only in fine-tune lr need the same rotation pretext: it is trained once."""
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    smoke = get_preset("smoke")
    preset = smoke.replace(
        arms=({"task": "none"}, {"task": "rotation", "lr": 1e-3}, {"task": "rotation", "lr": 3e-3}),
        seeds=(0,),
        base=smoke.base.replace(pretext_epochs=2),
    )
    run_dir = run_study(finalize_study(preset), storage=tmp_path / "runs", name="shared", write_report=False)
    results = pd.read_csv(run_dir / "results.csv")
    rot = results[(results["task"] == "rotation") & (results["regime"] == "none")]
    assert len(rot) == 2 and set(rot["arm"]) == {"rotation(lr=0.001)", "rotation(lr=0.003)"}
    assert sorted(rot["pretext_cached"]) == [False, True]
    assert rot["pretext_epochs_run"].sum() == 2
    # Both fine-tunes started from the same pretext: identical pretext metrics.
    assert rot["pretext_aad_deg"].nunique() == 1
    assert len(list((run_dir / "pretext_cache").iterdir())) >= 1


def test_search_runs_optuna_on_validation_auc(ray_session, tmp_path, monkeypatch):
    """`study search`: Optuna suggests conditional task parameters; trials are ranked by validation AUC."""
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    smoke, search = get_preset("smoke"), get_preset("search")
    preset = search.replace(base=smoke.base.replace(patiences=(1,)))
    study = finalize_study(apply_flags(preset, samples=3, asha=True))
    run_dir = run_study(study, storage=tmp_path / "runs", name="search")
    table = pd.read_csv(run_dir / "search.csv")
    assert len(table) == 3 and table["search_score"].is_monotonic_decreasing
    assert table["search_score"].between(0, 1).all()
    assert set(table["status"]) <= {"ok", "stopped"}  # ASHA may stop weak trials early
    assert set(table["task"]) <= set(search.search.tasks)
    # Conditional parameters: only the task that uses a parameter gets one.
    rotation = table[table["task"] == "rotation"]
    assert rotation["patch_size"].isna().all() and rotation["swap_count"].isna().all()
    assert not (run_dir / "report.html").exists()


def test_smoke_report_html_is_self_contained_with_embedded_figures(smoke_run):
    import base64

    from report_html import parse

    page = parse(smoke_run / "report.html")
    assert not page.external
    figures = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(figures) >= 4 and len(figures) == len(page.images)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in figures)
    assert "Corruption removal" in page.full_text and "Secondary comparisons (exploratory)" in page.full_text
    assert "Table 1" in page.full_text


def test_the_console_of_a_study_is_short_and_says_what_happened(smoke_run):
    """Not a TTY (as in CI): a line per finished trial, progress lines, the report path and one TensorBoard
    hint naming the run folder; none of Tune's trial tables, result dumps or per-epoch checkpoint lines."""
    text = (smoke_run.parent / "smoke.console.txt").read_text()
    lines = text.splitlines()
    assert len(lines) <= 30, text  # 8 trials; the demo's 36 stay under 60
    assert "progress: 0/8 done, 0 running, 8 waiting" in text
    assert sum(re.match(r"\[\s*\d+/8\] done    ", line) is not None for line in lines) == 8
    assert any(line.startswith("progress: 8/8 done") for line in lines)
    assert f"Report: {smoke_run / 'report.html'}" in text
    hints = [line for line in lines if "tensorboard --logdir" in line]
    assert hints == [f"Curves:  tensorboard --logdir {smoke_run}"], hints
    noises = (
        "Checkpoint successfully created",
        "Trial status",
        "Configuration for experiment",
        "╭",
        "invalid value",
    )
    for noise in noises:
        assert noise not in text, noise


def test_the_report_opens_with_one_verdict_per_declared_primary_comparison(smoke_run):
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    plan = manifest["config"]["analysis"]
    assert plan["primary_regime"] == "patience2" and plan["equivalence_margin"] == 0.02  # declared, recorded
    md = (smoke_run / "report.md").read_text()
    answer = md.split("## The answer", 1)[1].split("\n## ", 1)[0]
    assert md.index("## The answer") < md.index("## Method")
    assert "Question:" in answer and "primary cell declared before the run: patience 2" in answer
    rows = [line for line in answer.splitlines() if line.startswith("| ") and "Verdict" not in line]
    verdicts = {"arm better", "baseline better", "equivalent within ±δ", "undecided"}
    assert len(rows) == 3 and all(sum(v in r for v in verdicts) == 1 for r in rows)
    assert "figures/verdicts.png" in answer
    comp = pd.read_csv(smoke_run / "comparisons.csv")
    primary = comp[comp["primary"]]
    assert len(primary) == 3 and set(primary["regime"]) == {"patience2"}
    cols = ["p_tost", "p_tost_holm", "p_bayes_better", "p_bayes_equivalent", "p_bayes_worse"]
    assert primary[cols].notna().all().all()
    assert primary[["p_bayes_better", "p_bayes_equivalent", "p_bayes_worse"]].sum(axis=1).round(6).eq(1).all()
    assert comp.loc[~comp["primary"], "verdict"].isna().all()


def test_report_says_when_the_primary_analysis_is_overridden(smoke_run, tmp_path, study_env):
    from conftest import run_cli

    run = tmp_path / "smoke"
    shutil.copytree(smoke_run, run)
    proc = run_cli("report", str(run), "--primary", "none", "--margin", "0.05", env=study_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "override the primary analysis the run declared" in proc.stdout
    md = (run / "report.md").read_text()
    assert "overrides the declared primary analysis" in md and "regime none" in md
    comp = pd.read_csv(run / "comparisons.csv")
    assert set(comp.loc[comp["primary"], "regime"]) == {"none"}
    bad = run_cli("report", str(run), "--primary", "patience7", env=study_env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--primary patience7: not a cell of this run" in bad.stderr
