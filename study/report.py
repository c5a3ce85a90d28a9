"""Assemble a run's report: ``report.md``, a self-contained ``report.html``, CSV tables and PNG figures.

``write_report(run_dir)`` reads ``results.csv`` (required) and, when present, ``history.csv``,
``manifest.json`` and ``examples/*.npz``; statistics come from ``analysis`` and figures from ``plots``.
Anything optional that is missing or empty is rendered as "n/a" with the reason, never as a crash.

The document is built once as a list of blocks (headings, paragraphs, tables, figures, boxes) and rendered
twice, to Markdown (figures linked from ``figures/``) and to HTML (figures embedded as base64 PNG data URIs,
inline CSS, no scripts), so the two files always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from study import analysis as A
from study import plots

# The paper's Table 1 (soft accuracy, %, one run per cell), for comparison with the repeated-seed results.
PAPER_TABLE1 = {
    "none": {"baseline": 88.5, "rotation": 88.7, "missing_patch": 88.2, "corruption": 89.7},
    "patience3": {"baseline": 74.1, "rotation": 82.9, "missing_patch": 87.6, "corruption": 90.2},
    "patience10": {"baseline": 79.0, "rotation": 86.7, "missing_patch": 88.3, "corruption": 90.3},
}
PRETEXT_LABELS = {
    "pretext_mse": "MSE (angle/360)",
    "pretext_aad": "AAD (angle/360)",
    "pretext_aad_deg": "AAD (\u00b0)",
    "pretext_aad_circ": "circular AAD (angle/360)",
    "pretext_aad_circ_deg": "circular AAD (\u00b0)",
    "pretext_sd_deg": "SD (\u00b0)",
    "pretext_sd_circ_deg": "circular SD (\u00b0)",
    "pretext_accuracy": "4-way accuracy",
    "pretext_loss": "4-way loss",
    "pretext_mse_mean": "MSE (mean over images)",
    "pretext_mse_sd": "MSE (SD over images)",
    "pretext_ssim_mean": "SSIM (mean over images)",
    "pretext_ssim_sd": "SSIM (SD over images)",
}
NA = "n/a"


# ------------------------------------------------------------------------------------------ document model


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Box:
    """A highlighted box: ``kind`` "warning" (results cannot be trusted as they stand) or "note"."""

    kind: Literal["warning", "note"]
    title: str
    items: list[str] = field(default_factory=list)


@dataclass
class Table:
    frame: pd.DataFrame  # cells already formatted as text
    caption: str = ""


@dataclass
class Image:
    path: Path  # absolute; linked relative to the run dir in Markdown, embedded in HTML
    caption: str


@dataclass
class Pre:
    text: str


Block = Heading | Para | Bullets | Box | Table | Image | Pre


# ----------------------------------------------------------------------------------------------- formatting


def _seeds(x: Any) -> str:
    """A seed count for the power analysis: an integer, or "> 10000" beyond any practical study."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NA
    if v == math.inf:
        return "\u221e"
    if not math.isfinite(v):
        return NA
    return "> 10000" if v > 10000 else f"{math.ceil(v)}"


def _num(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NA
    if not math.isfinite(v):
        return "\u221e" if v == math.inf else NA
    text = f"{v:.{digits}g}"
    return "\u2212" + text[1:] if text.startswith("-") else text


def _value(x: float, metric: str) -> str:
    """A metric value for tables: % with one decimal for fractions, raw otherwise."""
    if not np.isfinite(x):
        return NA
    if metric in A.FRACTION_METRICS:
        return f"{100 * x:.1f}"
    if metric in ("stop_epoch", "best_epoch"):
        return f"{x:.1f}"
    return f"{x:.3g}"


def _mean_sd(mean: float, sd: float, metric: str) -> str:
    if not np.isfinite(mean):
        return NA
    return f"{_value(mean, metric)} \u00b1 {_value(sd, metric)}" if np.isfinite(sd) else _value(mean, metric)


def _diff(x: float, metric: str, signed: bool = False) -> str:
    """A difference for tables: two decimals of percentage points for fractions, 3 significant digits else."""
    if not np.isfinite(x):
        return NA
    text = f"{x:+.2f}" if signed else f"{x:.2f}"
    if metric not in A.FRACTION_METRICS:
        text = f"{x:+.3g}" if signed else f"{x:.3g}"
    return "\u2212" + text[1:] if text.startswith("-") else text


def _p(p: float) -> str:
    if not np.isfinite(p):
        return NA
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _unit(metric: str) -> str:
    return "%" if metric in A.FRACTION_METRICS else ""


# ------------------------------------------------------------------------------------------------ renderers


def _md_cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block], run_dir: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items))
        elif isinstance(b, Box):
            label = "Warning" if b.kind == "warning" else "Note"
            lines = [f"> **{label}: {b.title}**"] + [f"> - {i}" for i in b.items]
            out.append("\n".join(lines))
        elif isinstance(b, Table):
            f = b.frame
            lines = ["| " + " | ".join(_md_cell(c) for c in f.columns) + " |", "|" + "---|" * len(f.columns)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in f.itertuples(index=False)]
            if b.caption:
                lines.append(f"\n*{b.caption}*")
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            out.append(f"![{b.caption}]({b.path.relative_to(run_dir).as_posix()})\n\n*{b.caption}*")
        elif isinstance(b, Pre):
            out.append("```\n" + b.text + "\n```")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
caption{caption-side:bottom;font-style:italic;font-size:.9em;text-align:left;padding-top:.3em}
.warning{border-left:6px solid #d9822b;background:#fff4e5;padding:.6em 1em;margin:1em 0}
.note{border-left:6px solid #4a7ab5;background:#eef4fb;padding:.6em 1em;margin:1em 0}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-style:italic;font-size:.9em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Box):
            label = "Warning" if b.kind == "warning" else "Note"
            items = "<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>" if b.items else ""
            out.append(f'<div class="{b.kind}"><strong>{label}: {e(b.title)}</strong>{items}</div>')
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(str(c))}</th>" for c in b.frame.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>"
                for row in b.frame.itertuples(index=False)
            )
            cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption)}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Pre):
            out.append(f"<pre>{e(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- run inputs


def _read_manifest(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        return None, "manifest.json not found in the run dir (written by the runner when a study finishes)"
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"manifest.json could not be read ({e})"
    if not isinstance(m, dict):
        return None, "manifest.json is not a JSON object"
    return m, ""


def _read_history(run_dir: Path) -> tuple[pd.DataFrame | None, str]:
    if not (run_dir / "history.csv").is_file():
        return None, "history.csv not found in the run dir"
    try:
        h = A.load_history(run_dir)
    except A.AnalysisError as e:
        return None, str(e)
    if h.empty:
        return None, "history.csv has no rows"
    return h, ""


def _read_examples(run_dir: Path) -> tuple[dict[str, tuple[int, dict[str, np.ndarray]]], list[str]]:
    """One example file per task (lowest seed): ``{task: (seed, arrays)}``, plus notes on unreadable files."""
    found: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
    notes = []
    folder = run_dir / "examples"
    if not folder.is_dir():
        return found, notes
    for path in sorted(folder.glob("*_seed*.npz")):
        task, _, seed_text = path.stem.rpartition("_seed")
        try:
            seed = int(seed_text)
            with np.load(path) as z:
                arrays = {k: np.asarray(z[k]) for k in ("inputs", "targets", "outputs")}
        except (ValueError, KeyError, OSError) as e:
            notes.append(f"{path.name}: not a valid example file ({e})")
            continue
        if any(a.ndim != 4 or a.shape[-1] != 3 for a in arrays.values()):
            notes.append(f"{path.name}: arrays must be uint8 (N, S, S, 3)")
            continue
        if task not in found or seed < found[task][0]:
            found[task] = (seed, arrays)
    return found, notes


# ------------------------------------------------------------------------------------------- table builders


def _paper_layout(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows = regimes, columns = arms (paper's Table 1 layout); cells "mean ± SD", "(n = k)" if short."""
    s = summary[summary["metric"] == metric]
    arms = A.arm_order(s["arm"])
    regimes = A.regime_order(s["regime"])
    n_max = int(s["n"].max()) if len(s) else 0
    rows = []
    for regime in regimes:
        row = {"Regime": A.regime_title(regime)}
        for arm in arms:
            r = s[(s["regime"] == regime) & (s["arm"] == arm)]
            if r.empty or r["n"].iloc[0] == 0:
                row[A.arm_title(arm)] = NA
                continue
            r = r.iloc[0]
            cell = _mean_sd(r["mean"], r["sd"], metric)
            if r["n"] < n_max:
                cell += f" (n = {int(r['n'])})"
            row[A.arm_title(arm)] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def _paper_reference() -> pd.DataFrame:
    arms = ["baseline", "rotation", "missing_patch", "corruption"]
    rows = [
        {"Regime": A.regime_title(r), **{A.arm_title(a): f"{v[a]:.1f}" for a in arms}}
        for r, v in PAPER_TABLE1.items()
    ]
    return pd.DataFrame(rows)


def _comparison_display(comp: pd.DataFrame, alpha: float) -> pd.DataFrame:
    metric = comp["metric"].iloc[0]
    scale, unit = (100, " (pp)") if metric in A.FRACTION_METRICS else (1, "")
    conf = f"{round((1 - alpha) * 100)} % CI"
    rows = []
    for r in comp.itertuples(index=False):
        rows.append(
            {
                "Regime": r.regime_title,
                "Arm": r.arm_title,
                "n": r.n,
                "Baseline": _value(r.mean_baseline, metric),
                "Arm mean": _value(r.mean_arm, metric),
                f"\u0394{unit}": _diff(r.mean_diff * scale, metric, signed=True),
                conf: f"[{_diff(r.ci_low * scale, metric)}, {_diff(r.ci_high * scale, metric)}]"
                + ("" if r.ci_method == "BCa" else " *"),
                "p Wilcoxon": _p(r.p_wilcoxon),
                "p t-test": _p(r.p_ttest),
                "Holm p": _p(r.p_holm),
                "g_z": _num(r.hedges_gz, 2),
                "r_rb": _num(r.rank_biserial, 2),
                "P(improve)": _num(r.prob_improvement, 2),
                "seeds for 80 % power": _seeds(r.n_needed_80),
                "verdict": ("significant" if r.significant else "not significant")
                + (" (underpowered)" if r.underpowered else ""),
            }
        )
    return pd.DataFrame(rows)


def _all_metrics_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (regime, arm), g in summary.groupby(["regime", "arm"], sort=False):
        row = {"Regime": A.regime_title(regime), "Arm": A.arm_title(arm)}
        for r in g.itertuples(index=False):
            if r.metric in A.CLASSIFICATION_METRICS:
                row[A.metric_label(r.metric)] = _mean_sd(r.mean, r.sd, r.metric)
        row["n"] = int(g["n"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def _stop_epoch_table(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary[summary["metric"] == "stop_epoch"]
    rows = []
    for regime in A.regime_order(s["regime"]):
        row = {"Regime": A.regime_title(regime)}
        for arm in A.arm_order(s["arm"]):
            r = s[(s["regime"] == regime) & (s["arm"] == arm)]
            if r.empty or r["n"].iloc[0] == 0:
                row[A.arm_title(arm)] = NA
                continue
            r = r.iloc[0]
            row[A.arm_title(arm)] = (
                f"{_mean_sd(r['mean'], r['sd'], 'stop_epoch')}; median {r['median']:.0f} [{r['q1']:.0f}, {r['q3']:.0f}]"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _friedman_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for res in results:
        ranks = res["mean_ranks"]
        order = sorted(ranks, key=ranks.get)
        rows.append(
            {
                "Regime": A.regime_title(res["regime"]),
                "k arms": res["k"],
                "n seeds": res["n"],
                "\u03c7\u00b2": _num(res["statistic"], 4),
                "p": _p(res["p"]),
                "Nemenyi CD": _num(res["cd"], 3),
                "mean ranks (1 = best)": ", ".join(f"{A.arm_title(a)} {ranks[a]:.2f}" for a in order) or NA,
                "within one CD": "; ".join(" \u2248 ".join(A.arm_title(a) for a in c) for c in res["cliques"])
                or NA,
                "note": res["note"] or "",
            }
        )
    return pd.DataFrame(rows)


def _pretext_display(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for arm in A.arm_order(table["arm"]):
        g = table[table["arm"] == arm]
        row = {"Self-supervision method": A.arm_title(arm), "n seeds": int(g["n"].max())}
        for r in g.itertuples(index=False):
            row[PRETEXT_LABELS.get(r.metric, r.metric)] = (
                f"{_num(r.mean, 4)} \u00b1 {_num(r.sd, 3)}" if np.isfinite(r.sd) else _num(r.mean, 4)
            )
        rows.append(row)
    return pd.DataFrame(rows).fillna(NA)


def _kv_table(items: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"key": list(items), "value": [str(v) for v in items.values()]})


# ---------------------------------------------------------------------------------------------- the report


def write_report(
    run_dir: str | Path,
    metric: str = "test_auc",
    *,
    alpha: float = 0.05,
    n_resamples: int = 9999,
    seed: int = 0,
    family: Literal["table", "regime"] = "regime",
    strict: bool = False,
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html``, ``summary.csv``, ``comparisons.csv`` (and ``friedman.csv``,
    ``pretext_rotation.csv``, ``pretext_image.csv``, ``excluded.csv``) and ``figures/*.png`` into ``run_dir``.

    ``metric``: the primary metric for the inferential comparisons (other metrics are descriptive only, so
    the multiple-comparison family stays the one stated). A table that is not paired by seed is reported as
    a warning with descriptive tables only, unless ``strict`` (then ``PairingError`` is raised).
    Returns ``(md_path, html_path)``.
    """
    run_dir = Path(run_dir)
    df = A.load_run(run_dir)
    metric = A.metric_column(metric, df.columns)
    label = A.metric_label(metric)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for old in fig_dir.glob("*.png"):  # figures of an earlier report must not linger
        old.unlink()

    manifest, manifest_why = _read_manifest(run_dir)
    history, history_why = _read_history(run_dir)
    examples, example_notes = _read_examples(run_dir)
    _, excluded = A.split_valid(df)
    summary = A.summarise(df)
    summary.to_csv(run_dir / "summary.csv", index=False)
    excluded.to_csv(run_dir / "excluded.csv", index=False)

    pairing: A.Pairing | None = None
    pairing_error = ""
    try:
        pairing = A.check_pairing(df, metric)
    except A.PairingError as e:
        if strict:
            raise
        pairing_error = str(e)
    comp = (
        A.compare_to_baseline(df, metric, alpha=alpha, n_resamples=n_resamples, seed=seed, family=family)
        if pairing is not None
        else pd.DataFrame(columns=A.COMPARISON_COLUMNS)
    )
    comp.to_csv(run_dir / "comparisons.csv", index=False)
    friedmans = [A.friedman(df, metric, r, alpha) for r in pairing.regimes] if pairing is not None else []
    pd.DataFrame(
        [
            {
                **{k: v for k, v in f.items() if k not in ("mean_ranks", "cliques", "arms", "dropped_seeds")},
                "mean_ranks": json.dumps(f["mean_ranks"]),
                "cliques": json.dumps(f["cliques"]),
                "dropped_seeds": json.dumps(f["dropped_seeds"]),
            }
            for f in friedmans
        ]
    ).to_csv(run_dir / "friedman.csv", index=False)
    rot_table, img_table = A.pretext_tables(df)
    rot_table.to_csv(run_dir / "pretext_rotation.csv", index=False)
    img_table.to_csv(run_dir / "pretext_image.csv", index=False)

    arms = A.arm_order(df["arm"])
    regimes = A.regime_order(df["regime"])
    seeds = sorted(df["seed"].unique())
    n_trials = df["trial_id"].nunique()
    preset = (manifest or {}).get("preset")
    title = "Self-supervised pre-training for melanoma classification: study report"
    blocks: list[Block] = [Heading(1, title)]
    blocks.append(
        Para(
            f"Run: {run_dir.name}" + (f" (preset {preset})" if preset else "") + f". {n_trials} trials: "
            f"{len(arms)} arm(s) ({', '.join(A.arm_title(a) for a in arms)}) \u00d7 {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))}); early-stopping regimes: {', '.join(A.regime_title(r) for r in regimes)}."
        )
    )

    # -- method
    m = len(comp)
    n_ssl = comp["arm"].nunique()
    family_text = (
        f"all m = {m} comparisons in this report ({n_ssl} self-supervised arm(s) \u00d7 "
        f"{comp['regime'].nunique()} regime(s))"
        if family == "table"
        else f"the m = {n_ssl} comparison(s) within each regime (each regime is one row of the paper's "
        "Table 1, a question of its own)"
    )
    blocks += [
        Heading(2, "Method"),
        Para(
            "Each seed fixes the data split, the validation split and the fine-tune order for every arm, so each "
            "self-supervised arm is compared with the no-self-supervision baseline through per-seed paired "
            f"differences (arm \u2212 baseline) of test {label}, separately in each early-stopping regime; the "
            "stopping epoch is chosen on validation loss, never on a test metric. Headline test: two-sided "
            "Wilcoxon signed-rank test on the paired differences (exact null distribution without ties, an "
            "exhaustive sign-flip permutation test with ties and n \u2264 13, the normal approximation "
            f"otherwise; zero differences dropped), Holm-corrected across {family_text} at \u03b1 = {alpha:g}. "
            f"Interval: {round((1 - alpha) * 100)} % BCa bootstrap CI of the mean paired difference "
            f"({n_resamples} resamples, seed {seed}; percentile where BCa is undefined, marked *; not adjusted "
            "for multiplicity, so an interval can exclude 0 while the Holm p is above \u03b1). Also reported: "
            "paired t-test, Hedges' g_z, matched-pairs rank-biserial correlation r_rb, the share of seeds on "
            "which the arm beats the baseline (ties count half), and the seeds a paired t-test would need for "
            "80 % power at the observed effect (a planning figure). Seeds whose trial diverged or failed are "
            "dropped pairwise and listed under Excluded trials. Other metrics are descriptive only."
        ),
    ]

    # -- headlines
    blocks.append(Heading(2, "Headline results"))
    if pairing_error:
        blocks.append(
            Box(
                "warning",
                "the results table is not paired by seed; no comparison was computed",
                [pairing_error],
            )
        )
    elif comp.empty:
        blocks.append(Para(f"{NA}: only the baseline arm was run, so there is nothing to compare with it."))
    else:
        blocks.append(Bullets(list(comp["headline"])))
        under = comp[comp["underpowered"]]
        if len(under):
            need = int(under["min_n_for_significance"].max())
            blocks.append(
                Box(
                    "warning",
                    f"too few seeds: {len(under)} of {len(comp)} comparison(s) cannot reach significance whatever "
                    f"the data; at least {need} seeds (non-zero paired differences) are needed",
                    list(dict.fromkeys(under["warning"])),
                )
            )
        blocks.append(Para(_power_sentence(comp)))
        if family != "table" and comp["regime"].nunique() > 1:
            strict_sig = comp[comp["p_holm_table"] < alpha]
            blocks.append(
                Para(
                    f"Robustness: with Holm across all {m} comparisons of the table instead of per regime, "
                    f"{len(strict_sig)} of {int(comp['significant'].sum())} significant comparison(s) remain "
                    "significant"
                    + (
                        ": " + "; ".join(f"{r.arm_title}, {r.regime_title}" for r in strict_sig.itertuples())
                        if len(strict_sig)
                        else ""
                    )
                    + f" (p_holm_table in comparisons.csv; that family needs at least "
                    f"{A.min_n_for_significance(alpha, m)} seeds)."
                )
            )
    for w in A.consistency_warnings(df):
        blocks.append(Box("warning", "the arms are not comparable as run", [w]))

    if not comp.empty:
        fig = plots.forest_plot(
            comp, f"\u0394 {label}" + (" (pp)" if metric in A.FRACTION_METRICS else ""), alpha=alpha
        )
        blocks.append(
            Image(
                plots.save_figure(fig, fig_dir / "forest.png"), f"Paired differences in {label} vs baseline"
            )
        )

    # -- Table 1
    blocks.append(Heading(2, f"Table 1: test {label} per arm and regime"))
    blocks.append(
        Table(
            _paper_layout(summary, metric),
            f"Mean \u00b1 SD over seeds, {_unit(metric) or 'raw units'}; status-ok trials.",
        )
    )
    if metric != "test_soft_accuracy":
        blocks.append(Heading(3, "Table 1 (soft accuracy, the paper's \u201caccuracy\u201d)"))
        blocks.append(Table(_paper_layout(summary, "test_soft_accuracy"), "Mean \u00b1 SD over seeds, %."))
    blocks.append(
        Table(
            _paper_reference(), "The paper's Table 1 (soft accuracy, %, a single run per cell) for reference."
        )
    )

    # -- full comparison table
    blocks.append(Heading(2, "All comparisons with the baseline"))
    if comp.empty:
        blocks.append(
            Para(
                f"{NA}: "
                + (
                    "the table is not paired (see above)."
                    if pairing_error
                    else "no arm besides the baseline."
                )
            )
        )
    else:
        blocks.append(
            Table(
                _comparison_display(comp, alpha),
                "Means in % for fractions; \u0394 and CI in percentage points; Holm p is the headline. "
                "Full precision in comparisons.csv.",
            )
        )
    if pairing is not None:
        panels = []
        means = summary[summary["metric"] == metric].set_index(["regime", "arm"])["mean"]
        for regime in pairing.regimes:
            mat, _, arm_cols = A.paired_matrix(df, metric, regime)
            panels.append(
                (A.regime_title(regime), mat, arm_cols, [means.get((regime, a), np.nan) for a in arm_cols])
            )
        scale = 100.0 if metric in A.FRACTION_METRICS else 1.0
        fig = plots.paired_seeds_plot(panels, f"test {label}" + (" (%)" if scale == 100 else ""), scale=scale)
        blocks.append(Image(plots.save_figure(fig, fig_dir / "paired_seeds.png"), f"Per-seed test {label}"))

    # -- Friedman
    blocks.append(Heading(2, "All arms together: Friedman test and mean ranks"))
    if not friedmans:
        blocks.append(Para(f"{NA}: the table is not paired by seed."))
    else:
        blocks.append(
            Para(
                "Friedman test over all arms per regime (complete seeds only), with the Nemenyi critical "
                "difference CD = q\u03b1\u221a(k(k+1)/(6N)). Descriptive: Nemenyi depends on which arms are in "
                "the pool, so the pairwise Holm-corrected Wilcoxon tests above are the headline."
            )
        )
        blocks.append(Table(_friedman_table(friedmans)))
        if any(f["k"] >= 3 and f["n"] >= 2 for f in friedmans):
            fig = plots.mean_rank_plot([(A.regime_title(f["regime"]), f) for f in friedmans])
            blocks.append(
                Image(
                    plots.save_figure(fig, fig_dir / "mean_ranks.png"),
                    "Mean ranks and critical difference per regime",
                )
            )

    # -- all metrics, stop epochs, curves
    blocks.append(Heading(2, "All classification metrics"))
    blocks.append(
        Table(
            _all_metrics_table(summary),
            "Mean \u00b1 SD over seeds, %; descriptive (summary.csv has median and IQR).",
        )
    )
    blocks.append(Heading(2, "Stop epochs"))
    blocks.append(
        Table(
            _stop_epoch_table(summary),
            "Fine-tune epoch at which each regime stopped: mean \u00b1 SD; median [Q1, Q3]. An early stop at the "
            "first epochs with chance-level validation accuracy points to unsettled BatchNorm statistics.",
        )
    )
    blocks.append(Heading(2, "Learning curves"))
    curves = (
        A.learning_curves(history, exclude_trials=excluded["trial_id"].unique())
        if history is not None
        else None
    )
    if curves is None:
        blocks.append(Para(f"{NA}: {history_why}."))
    elif curves.empty:
        blocks.append(Para(f"{NA}: history.csv has no finite fine-tune validation loss/AUC values."))
    else:
        fig = plots.learning_curves_plot(
            curves, [("val_loss", "validation loss"), ("val_auc", "validation AUC")]
        )
        blocks.append(
            Image(
                plots.save_figure(fig, fig_dir / "learning_curves.png"),
                "Validation loss and AUC per fine-tune epoch",
            )
        )

    # -- pretext
    blocks.append(Heading(2, "Pretext tasks (paper Tables 2 and 3)"))
    blocks.append(Heading(3, "Table 2: rotation prediction"))
    if rot_table.empty:
        blocks.append(Para(f"{NA}: no rotation arm with finite pretext metrics in this run."))
    else:
        blocks.append(
            Table(
                _pretext_display(rot_table),
                "Mean \u00b1 SD across seeds of each test-set metric. Scaled values are angle/360; circular "
                "differences take the shorter way round the circle (the paper's are not circular).",
            )
        )
    blocks.append(Heading(3, "Table 3: missing patch and corruption removal"))
    if img_table.empty:
        blocks.append(Para(f"{NA}: no image pretext arm with finite pretext metrics in this run."))
    else:
        blocks.append(
            Table(
                _pretext_display(img_table),
                "Mean \u00b1 SD across seeds; each seed's value is the mean (or SD) over test images of MSE and "
                "SSIM on de-processed images.",
            )
        )
    blocks.append(Heading(3, "Pretext examples"))
    if not examples:
        blocks.append(
            Para(f"{NA}: no examples/<task>_seed<seed>.npz files in the run dir (image tasks only).")
        )
    for task, (ex_seed, arrays) in sorted(examples.items(), key=lambda kv: _task_rank(kv[0])):
        fig = plots.example_grid(
            f"{A.arm_title(task)} (seed {ex_seed})", arrays["inputs"], arrays["targets"], arrays["outputs"]
        )
        blocks.append(
            Image(
                plots.save_figure(fig, fig_dir / f"examples_{task}.png"),
                f"{A.arm_title(task)}: input, target, output",
            )
        )
    if example_notes:
        blocks.append(Box("note", "example files skipped", example_notes))

    # -- excluded
    blocks += _excluded_blocks(df, excluded, pairing, manifest)
    blocks += _data_blocks(manifest, manifest_why)
    blocks += _manifest_blocks(manifest, manifest_why)

    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    md_path.write_text(render_markdown(blocks, run_dir), encoding="utf-8")
    html_path.write_text(render_html(blocks, title), encoding="utf-8")
    return md_path, html_path


def _task_rank(task: str) -> tuple[int, str]:
    return (A.TASK_ORDER.index(task) if task in A.TASK_ORDER else len(A.TASK_ORDER), task)


def _power_sentence(comp: pd.DataFrame) -> str:
    parts = [
        f"{r.arm_title}, {r.regime_title}: {_seeds(r.n_needed_80)}"
        for r in comp.itertuples(index=False)
        if not r.significant
    ]
    if not parts:
        return "Every comparison is significant after Holm correction."
    return (
        "Seeds a paired t-test would need for 80 % power at \u03b1 = 0.05, given each non-significant "
        "comparison's observed effect (\u221e: no observed difference): " + "; ".join(parts) + "."
    )


def _excluded_blocks(
    df: pd.DataFrame, excluded: pd.DataFrame, pairing: A.Pairing | None, manifest: dict[str, Any] | None
) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Excluded trials")]
    n_trials = df["trial_id"].nunique()
    ex = excluded.drop_duplicates("trial_id")
    counts = ex["status"].value_counts()
    blocks.append(
        Para(
            f"{len(ex)} of {n_trials} trials excluded ({int(counts.get('diverged', 0))} diverged, "
            f"{int(counts.get('error', 0))} errored). Their seeds are dropped pairwise from the comparisons they "
            "touch (a baseline trial touches every comparison of its regime)."
        )
    )
    if len(ex):
        s = A.exclusion_summary(excluded)
        s["arm"] = s["arm"].map(A.arm_title)
        blocks.append(Table(s.rename(columns={"n_trials": "trials"})))
    if pairing is not None and len(pairing.dropped):
        blocks.append(Box("note", "seeds dropped from the paired comparisons", pairing.notes()))
    errors = (manifest or {}).get("errors") or []
    if errors:
        rows = [
            {k: str(e.get(k, "")) for k in ("trial_id", "arm", "seed", "error")}
            for e in errors
            if isinstance(e, dict)
        ]
        if rows:
            blocks.append(Table(pd.DataFrame(rows), "Errors recorded in manifest.json."))
    return blocks


def _data_blocks(manifest: dict[str, Any] | None, why: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Data and leakage check")]
    check = (manifest or {}).get("data_check")
    if manifest is None:
        return blocks + [Para(f"{NA}: {why}.")]
    if not isinstance(check, dict):
        return blocks + [
            Para(f"{NA}: the manifest has no data_check (the runner did not check the data set).")
        ]
    if "ok" in check:
        blocks.append(Para(f"Data check passed: {'yes' if check.get('ok') else 'NO'}."))
    if check.get("summary"):
        blocks.append(Pre(str(check["summary"])))
    near = check.get("near_duplicates")
    if near is not None:
        blocks.append(Para(f"Near-duplicate train/test pairs (perceptual hash): {near}."))
    problems = [str(p) for p in check.get("problems") or []]
    warns = [str(w) for w in check.get("warnings") or []]
    if problems:
        blocks.append(Box("warning", "data problems", problems))
    if isinstance(near, (int, float)) and near > 0:
        leak = (
            f"{near} near-duplicate train/test pair(s): test metrics may be optimistic for every arm; remove "
            "them (or report results without them) before drawing conclusions."
        )
        blocks.append(Box("warning", "possible train/test leakage", [leak]))
    if warns:
        blocks.append(Box("note", "data warnings", warns))
    return blocks


def _manifest_blocks(manifest: dict[str, Any] | None, why: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Run manifest")]
    if manifest is None:
        return blocks + [Para(f"{NA}: {why}.")]
    keys = ("preset", "git_revision", "data_fingerprint", "started", "finished", "n_trials")
    info = {k: (manifest.get(k) if manifest.get(k) is not None else NA) for k in keys if k in manifest}
    if info:
        blocks.append(Table(_kv_table(info)))
    versions = manifest.get("versions")
    if isinstance(versions, dict) and versions:
        blocks.append(Heading(3, "Versions"))
        blocks.append(Table(_kv_table(versions)))
    if "config" in manifest:
        blocks.append(Heading(3, "Config"))
        blocks.append(Pre(json.dumps(manifest["config"], indent=2, sort_keys=True, default=str)))
    if len(blocks) == 1:
        blocks.append(Para(f"{NA}: manifest.json holds none of the expected keys."))
    return blocks
