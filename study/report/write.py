"""Write a run's report: ``report.md``, a self-contained ``report.html``, CSV tables and PNG figures.

``write_report(run_dir)`` runs in three steps:

1. ``run_analysis.analyse_run`` reads the run and computes every statistic once into one ``RunAnalysis``;
2. ``write_tables`` saves its tables as CSV;
3. one function per report section (``sections_*``) turns it into blocks (headings, paragraphs, tables,
   figures drawn by ``plots``, boxes), which ``document`` renders twice, to Markdown and to HTML, so the
   two files always say the same thing.

Anything optional that is missing or empty is rendered as "n/a" with the reason, never as a crash; a
sentence about a test appears only when that test ran.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from study import analysis as A
from study import verdicts as V
from study.io.files import write_text_replacing
from study.report import (
    sections_answer,
    sections_headline,
    sections_intro,
    sections_pretext,
    sections_results,
    sections_run,
)
from study.report.document import Block, Box, render_html, render_markdown
from study.report.run_analysis import RunAnalysis, analyse_run


def _output_path(path: Path) -> Path:
    """``path`` as a report output: an AnalysisError (one line, the fix) when a folder holds its name."""
    if path.is_dir() and not path.is_symlink():
        raise A.AnalysisError(
            f"{path}: is a folder where the report writes a file; move it out of the run dir and run "
            "`study report` again"
        )
    return path


def _write_text(path: Path, text: str) -> None:
    """UTF-8 text, replacing (never following) a symlink at ``path``; see ``files.write_replacing``."""
    write_text_replacing(_output_path(path), text)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame.to_csv(path, index=False)``'s bytes, written as ``_write_text`` writes."""
    _write_text(path, frame.to_csv(index=False))


def _remove_output(path: Path) -> None:
    """Delete a report output if there: a symlink itself (never its target); never a folder."""
    if path.is_symlink() or path.is_file():
        path.unlink()


def write_tables(a: RunAnalysis) -> None:
    """The analysis' tables as CSV in the run dir (full precision; the report rounds). A symlink at an
    output's name is replaced by the file, never written through."""
    d = a.run_dir
    _write_csv(a.summary, d / "summary.csv")
    _write_csv(a.excluded, d / "excluded.csv")
    _write_csv(_with_verdicts(a.comparisons, a.verdicts), d / "comparisons.csv")
    friedman = pd.DataFrame(
        [
            {
                **{
                    k: v
                    for k, v in f.items()
                    if k not in ("mean_ranks", "vs_control", "arms", "dropped_seeds")
                },
                "mean_ranks": json.dumps(f["mean_ranks"]),
                "vs_control": json.dumps(f["vs_control"]),
                "dropped_seeds": json.dumps(f["dropped_seeds"]),
            }
            for f in a.friedmans
        ]
    )
    _write_csv(friedman, d / "friedman.csv")
    for name, table in a.pretext_tables.items():
        if name in sections_pretext.PAPER_PRETEXT_TABLES or not table.empty:
            _write_csv(table, d / f"pretext_{name}.csv")
        else:
            _remove_output(d / f"pretext_{name}.csv")  # a table of an earlier report must not linger
    _write_csv(a.pretext_refs, d / "pretext_reference.csv")
    probe = a.probe
    if len(a.probe_comparisons):
        cols = ["arm", "mean_diff", "sd_diff", "p_wilcoxon", "wilcoxon_method", "p_holm", "prob_improvement"]
        probe = probe.merge(
            a.probe_comparisons[[A.LABEL_FRACTION, *cols]].rename(
                columns={"mean_diff": "mean_diff_vs_baseline"}
            ),
            on=[A.LABEL_FRACTION, "arm"],
            how="left",
        )
    _write_csv(probe, d / "probe.csv")
    _write_csv(a.cost_benefit, d / "cost_benefit.csv")
    if a.several_fractions:
        _write_csv(a.efficiency, d / "label_efficiency.csv")
    else:
        _remove_output(d / "label_efficiency.csv")  # a fraction-grid report's table must not linger


def _with_verdicts(comp: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """comparisons.csv: every comparison, with the primary ones' TOST, Bayesian probabilities and verdict."""
    keys = [A.LABEL_FRACTION, "regime", "arm"]
    if verdicts.empty or comp.empty:
        return comp.assign(**{c: pd.Series(dtype=float) for c in V.VERDICT_COLUMNS})
    columns = [*V.VERDICT_COLUMNS, *(["look"] if "look" in verdicts else [])]  # the look that decided it
    return comp.merge(verdicts[[*keys, *columns]], on=keys, how="left").assign(
        primary=lambda f: f["primary"].fillna(False).astype(bool)
    )


def write_report(
    run_dir: str | Path,
    metric: str | None = None,
    *,
    alpha: float = 0.05,
    family: Literal["primary", "study", "regime", "table"] = "primary",
    strict: bool = False,
    primary: tuple[str, float | None] | None = None,
    margin: float | None = None,
    warnings: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html``, ``summary.csv``, ``comparisons.csv`` (and ``friedman.csv``,
    ``pretext_<table>.csv`` of each of the paper's pretext tables and of another registered task table the
    run has arms in, ``pretext_reference.csv``, ``probe.csv``, ``excluded.csv``) and
    ``figures/*.png`` into ``run_dir``.

    ``metric``: the primary metric for the inferential comparisons (default: the run's declared one) (other metrics are descriptive only, so
    the multiple-comparison family stays the one stated). ``family``: the Holm family of the headline p,
    ``"primary"`` (default: the declared primary cell's arms, the other cells one secondary family),
    ``"study"`` (every comparison) or ``"regime"`` (``analysis.compare_to_baseline``); the report states the
    study-wise rate each implies.
    A table that is not paired by seed is reported as a warning with descriptive tables only, unless ``strict`` (then ``PairingError`` is raised).
    Nothing is written outside ``run_dir``: a symlink at an output's name is replaced by the file (never written
    through), a ``figures`` symlink by a real folder, and only figure names the report draws are deleted; a
    folder where an output goes is an ``AnalysisError``.
    ``primary`` (regime, label fraction or None) and ``margin`` replace the run's declared primary analysis;
    the report then says that its verdicts are not the pre-declared ones.
    ``warnings``: lines the report shows first, in a warning box (e.g. a results.csv edited after the run).
    Returns ``(md_path, html_path)``.
    """
    a = analyse_run(
        run_dir, metric, alpha=alpha, family=family, strict=strict, primary=primary, margin=margin
    )
    md_path, html_path = _output_path(a.run_dir / "report.md"), _output_path(a.run_dir / "report.html")
    fig_dir = _figure_dir(a.run_dir)
    write_tables(a)
    blocks = report_blocks(a, fig_dir)
    if warnings:  # right under the title, before any number the warning is about
        blocks.insert(1, Box("warning", "the results table does not match the run's records", list(warnings)))
    _write_text(md_path, render_markdown(blocks, a.run_dir))
    _write_text(html_path, render_html(blocks, sections_intro.TITLE))
    return md_path, html_path


def _is_figure_name(name: str) -> bool:
    """A file name the report draws into figures/ (``examples_<task>.png`` for any task)."""
    return name in FIGURE_NAMES or (name.startswith("examples_") and name.endswith(".png"))


FIGURE_NAMES = frozenset(
    {
        "verdicts.png",
        "forest.png",
        "label_efficiency.png",
        "paired_seeds.png",
        "mean_ranks.png",
        "learning_curves.png",
    }
)


def _figure_dir(run_dir: Path) -> Path:
    """``run_dir/figures`` as a real folder, emptied of the figures of an earlier report.

    A symlink there is removed (its target untouched) and a real folder made in its place, so figures are
    never written into, nor deleted from, a folder outside the run. Only names the report draws are deleted,
    each as a directory entry (a symlink among them goes, its target stays); other files stay."""
    fig_dir = run_dir / "figures"
    if fig_dir.is_symlink():
        fig_dir.unlink()
    elif fig_dir.exists() and not fig_dir.is_dir():
        raise A.AnalysisError(
            f"{fig_dir}: is a file where the report writes its figures folder; move it out of the run dir and "
            "run `study report` again"
        )
    fig_dir.mkdir(exist_ok=True)
    for old in sorted(fig_dir.iterdir()):  # figures of an earlier report must not linger
        if _is_figure_name(old.name):
            _remove_output(_output_path(old))
    return fig_dir


def report_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    """The whole document, section by section; figures are drawn into ``fig_dir``."""
    return [
        *sections_intro.title_blocks(a),
        *sections_answer.answer_blocks(a, fig_dir),
        *sections_headline.headline_blocks(a, fig_dir),
        *sections_intro.method_blocks(a),
        *sections_results.table1_blocks(a),
        *sections_results.label_efficiency_blocks(a, fig_dir),
        *sections_results.comparison_blocks(a, fig_dir),
        *sections_results.friedman_blocks(a, fig_dir),
        *sections_results.metrics_blocks(a),
        *sections_results.stop_epoch_blocks(a),
        *sections_results.curve_blocks(a, fig_dir),
        *sections_pretext.pretext_blocks(a, fig_dir),
        *sections_run.cost_blocks(a),
        *sections_pretext.probe_blocks(a),
        *sections_run.excluded_blocks(a),
        *sections_run.data_blocks(a.manifest, a.manifest_why),
        *sections_run.manifest_blocks(a.manifest, a.manifest_why),
    ]
