"""Assemble a run's report: ``report.md``, a self-contained ``report.html``, CSV tables and PNG figures.

``write_report(run_dir)`` runs in three steps:

1. ``analyse_run`` reads ``results.csv`` (required) and, when present, ``history.csv``, ``manifest.json`` and
   ``examples/*.npz``, and computes every statistic once (``analysis``) into one ``RunAnalysis``;
2. ``write_tables`` saves its tables as CSV;
3. one small function per report section turns it into blocks (headings, paragraphs, tables, figures
   drawn by ``plots``, boxes), which are rendered twice, to Markdown (figures linked from ``figures/``) and
   to HTML (figures embedded as base64 PNG data URIs, inline CSS, no scripts), so the two files always say
   the same thing.

Anything optional that is missing or empty is rendered as "n/a" with the reason, never as a crash; a
sentence about a test appears only when that test ran.
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
from study.report import cost as C
from study.report import plots
from study.tasks import registry as pretext
from study.report import simulate as S
from study.io.files import write_text_replacing

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
    "pretext_region_mse": "MSE inside the corrupted region",
    "pretext_composite_mse": "MSE, composite (model fills the hole only)",
    "pretext_composite_ssim": "SSIM, composite",
}
# Rows of the model-vs-reference tables: analysis.pretext_reference_table's metric names.
REFERENCE_METRIC_LABELS = {
    "aad_circ_deg": "circular AAD (\u00b0)",
    "mse": "MSE (angle/360)",
    "accuracy": "4-way accuracy",
    "mse_mean": "MSE, whole image",
    "ssim_mean": "SSIM, whole image",
    "composite_mse": "MSE, composite (model fills the hole only)",
    "composite_ssim": "SSIM, composite",
    A.BIHARMONIC_METRIC: "MSE inside the hole, biharmonic subsample",
}
REGION_LABELS = {"missing_patch": "MSE inside the hole", "corruption": "MSE on the swapped pixels"}
# Short names of analysis.REFERENCE_TITLES for table cells (the captions say what each one is).
REFERENCE_SHORT = {"majority": "majority class", "meanfill": "mean fill"}
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
    """Preformatted text; with a ``summary`` it is folded away (HTML ``<details>``) behind that line."""

    text: str
    summary: str = ""


Block = Heading | Para | Bullets | Box | Table | Image | Pre


# ----------------------------------------------------------------------------------------------- formatting


def _seeds(x: Any) -> str:
    """A seed count for power planning: an integer, or "> SEEDS_MAX" (inf: beyond the simulated range)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NA
    if v == math.inf:
        return f"> {S.SEEDS_MAX}"
    if not math.isfinite(v):
        return NA
    return f"{math.ceil(v)}"


def _seed_range(lo: Any, hi: Any) -> str:
    """``"14\u201335"``, ``"9 to > 40"``, or one number when both ends agree."""
    a, b = _seeds(lo), _seeds(hi)
    if a == NA:
        return NA
    if a == b:
        return a
    return f"{a} to {b}" if b.startswith(">") else f"{a}\u2013{b}"


def _num(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NA
    if math.isinf(v):
        return "\u221e" if v > 0 else "\u2212\u221e"
    if not math.isfinite(v):
        return NA
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


def _percent(label_fraction: float) -> str:
    """``0.05 -> "5 %"``."""
    return A.fraction_title(label_fraction).removesuffix(" labels")


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
            fence = "```\n" + b.text + "\n```"
            # GitHub and most Markdown viewers fold <details>; a blank line lets the fence render inside it.
            out.append(
                f"<details><summary>{html.escape(b.summary, quote=False)}</summary>\n\n{fence}\n\n</details>"
                if b.summary
                else fence
            )
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
summary{cursor:pointer}
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
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
            # Wide tables scroll inside their own box, so a narrow screen can reach the last columns.
            out.append(
                f'<div class="table-scroll" style="overflow-x:auto"><table>{cap}'
                f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"
            )
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption)}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Pre):
            pre = f"<pre>{e(b.text)}</pre>"
            out.append(f"<details><summary>{e(b.summary)}</summary>{pre}</details>" if b.summary else pre)
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


IMAGE_EXAMPLE_KEYS = ("inputs", "targets", "outputs")
ANGLE_EXAMPLE_KEYS = ("inputs", "angle_true_deg", "angle_pred_deg")
VIEW_EXAMPLE_KEYS = ("images", "view1", "view2")  # tasks with their own two-view step (study.train.contrastive)


@dataclass(frozen=True)
class Example:
    """One seed's pretext examples. ``kind`` "image": uint8 ``(N, S, S, 3)`` ``inputs, targets, outputs``;
    "angle": uint8 ``(N, S, S, 3)`` rotated ``inputs`` with ``(N,)`` ``angle_true_deg, angle_pred_deg``;
    "views": uint8 ``(N, S, S, 3)`` test ``images`` and the two augmented views the task matched."""

    seed: int
    kind: Literal["image", "angle", "views"]
    arrays: dict[str, np.ndarray]


def _read_examples(run_dir: Path) -> tuple[dict[str, Example], list[str]]:
    """The lowest seed's examples per task, plus notes on files that cannot be shown.

    The runner copies every pretext's ``examples.npz``: an empty one (a diverged pretext) or a rotation file
    without recorded angles has nothing to show and is passed over without a note, since neither is a fault.
    """
    found: dict[str, Example] = {}
    notes = []
    folder = run_dir / "examples"
    if not folder.is_dir():
        return found, notes
    for path in sorted(folder.glob("*_seed*.npz")):
        task, _, seed_text = path.stem.rpartition("_seed")
        try:
            seed = int(seed_text)
            with np.load(path) as z:
                arrays = {k: np.asarray(z[k]) for k in z.files}
        except (ValueError, OSError) as e:
            notes.append(f"{path.name}: not a valid example file ({e})")
            continue
        example, problem = _example(task, seed, arrays)
        if problem:
            notes.append(f"{path.name}: {problem}")
        elif example is not None and (task not in found or seed < found[task].seed):
            found[task] = example
    return found, notes


def _example(task: str, seed: int, arrays: dict[str, np.ndarray]) -> tuple[Example | None, str]:
    """``(example or None, problem or "")`` for one file's arrays."""
    if not arrays:
        return None, ""
    # The pretext phase records angle examples for every head but `image` (unregistered tasks: image).
    registered = pretext.TASKS.get(task)
    if all(k in arrays for k in VIEW_EXAMPLE_KEYS):
        if not all(_is_image(arrays[k]) for k in VIEW_EXAMPLE_KEYS):
            return None, "images and views must be uint8 (N, S, S, 3)"
        return Example(seed, "views", {k: arrays[k] for k in VIEW_EXAMPLE_KEYS}), ""
    if registered is not None and registered.head != "image":
        if not all(k in arrays for k in ANGLE_EXAMPLE_KEYS):
            return None, ""
        x, t, p = (arrays[k] for k in ANGLE_EXAMPLE_KEYS)
        if not _is_image(x) or t.ndim != 1 or p.ndim != 1:
            return None, "inputs must be uint8 (N, S, S, 3) and angles (N,)"
        return Example(seed, "angle", arrays), ""
    missing = [k for k in IMAGE_EXAMPLE_KEYS if k not in arrays]
    if missing:
        return None, f"lacks array(s) {missing}"
    if not all(_is_image(arrays[k]) for k in IMAGE_EXAMPLE_KEYS):
        return None, "arrays must be uint8 (N, S, S, 3)"
    return Example(seed, "image", {k: arrays[k] for k in IMAGE_EXAMPLE_KEYS}), ""


def _is_image(x: np.ndarray) -> bool:
    return x.ndim == 4 and x.shape[-1] == 3


# ------------------------------------------------------------------------------------------- table builders


LABELS_COLUMN = "Labels"  # first column of a table with one row group per label fraction


def _cells(summary: pd.DataFrame) -> list[tuple[float, str]]:
    return list(dict.fromkeys(zip(summary[A.LABEL_FRACTION], summary["regime"])))


def _cell_columns(f: float, regime: str, with_fraction: bool) -> dict[str, str]:
    """The leading cells of a row of one (label fraction, regime): ``Regime``, after ``Labels`` when the
    study has several fractions."""
    return ({LABELS_COLUMN: _percent(f)} if with_fraction else {}) | {"Regime": A.regime_title(regime)}


def _paper_layout(summary: pd.DataFrame, metric: str, with_fraction: bool = False) -> pd.DataFrame:
    """Rows = regimes (per label fraction when ``with_fraction``), columns = arms (paper's Table 1 layout);
    cells "mean ± SD", "(n = k)" if short."""
    s = summary[summary["metric"] == metric]
    arms = A.arm_order(s["arm"])
    n_max = int(s["n"].max()) if len(s) else 0
    rows = []
    for f, regime in _cells(s):
        row = _cell_columns(f, regime, with_fraction)
        for arm in arms:
            r = s[(s[A.LABEL_FRACTION] == f) & (s["regime"] == regime) & (s["arm"] == arm)]
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


def _comparison_display(comp: pd.DataFrame, alpha: float, with_fraction: bool = False) -> pd.DataFrame:
    metric = comp["metric"].iloc[0]
    scale, unit = (100, " (pp)") if metric in A.FRACTION_METRICS else (1, "")
    level = round((1 - alpha) * 100)
    family = "study" if (comp["holm_family"] == "study").all() else "regime"
    rows = []
    for r in comp.itertuples(index=False):

        def interval(low: float, high: float) -> str:
            return (
                f"[{_diff(low * scale, metric)}, {_diff(high * scale, metric)}]" if np.isfinite(low) else NA
            )

        rows.append(
            ({LABELS_COLUMN: _percent(getattr(r, A.LABEL_FRACTION))} if with_fraction else {})
            | {
                "Regime": r.regime_title,
                "Arm": r.arm_title,
                "n": r.n,
                "Baseline": _value(r.mean_baseline, metric),
                "Arm mean": _value(r.mean_arm, metric),
                f"HL \u0394{unit}": _diff(r.hl_estimate * scale, metric, signed=True),
                f"{level} % signed-rank CI (HL)": interval(r.hl_ci_low, r.hl_ci_high),
                f"mean \u0394{unit}": _diff(r.mean_diff * scale, metric, signed=True),
                f"{level} % t-CI (mean)": interval(r.mean_ci_low, r.mean_ci_high),
                "p Wilcoxon": _p(r.p_wilcoxon),
                "p t-test": _p(r.p_ttest),
                f"Holm p ({family})": _p(r.p_holm),
                "g_z": _num(r.hedges_gz, 2),
                "r_rb": _num(r.rank_biserial, 2),
                "P(improve)": _num(r.prob_improvement, 2),
                "seeds for 80 % power (range)": _seed_range(
                    getattr(r, "seeds_80_min", np.nan), getattr(r, "seeds_80_max", np.nan)
                ),
                "verdict": ("significant" if r.significant else "not significant")
                + (" (underpowered)" if r.underpowered else ""),
            }
        )
    return pd.DataFrame(rows)


def _all_metrics_table(summary: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    rows = []
    for (f, regime, arm), g in summary.groupby([A.LABEL_FRACTION, "regime", "arm"], sort=False):
        row = _cell_columns(f, regime, with_fraction) | {"Arm": A.arm_title(arm)}
        for r in g.itertuples(index=False):
            if r.metric in A.CLASSIFICATION_METRICS:
                row[A.metric_label(r.metric)] = _mean_sd(r.mean, r.sd, r.metric)
        row["n"] = int(g["n"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def _stop_epoch_table(summary: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    s = summary[summary["metric"] == "stop_epoch"]
    rows = []
    for f, regime in _cells(s):
        row = _cell_columns(f, regime, with_fraction)
        for arm in A.arm_order(s["arm"]):
            r = s[(s[A.LABEL_FRACTION] == f) & (s["regime"] == regime) & (s["arm"] == arm)]
            if r.empty or r["n"].iloc[0] == 0:
                row[A.arm_title(arm)] = NA
                continue
            r = r.iloc[0]
            row[A.arm_title(arm)] = (
                f"{_mean_sd(r['mean'], r['sd'], 'stop_epoch')}; "
                f"median {r['median']:.0f} [{r['q1']:.0f}, {r['q3']:.0f}]"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _friedman_table(results: list[dict[str, Any]], with_fraction: bool = False) -> pd.DataFrame:
    rows = []
    for res in results:
        ranks = res["mean_ranks"]
        order = sorted(ranks, key=ranks.get)
        rows.append(
            _cell_columns(res.get(A.LABEL_FRACTION, 1.0), res["regime"], with_fraction)
            | {
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
            row[_metric_label(r.task, r.metric)] = (
                f"{_num(r.mean, 4)} \u00b1 {_num(r.sd, 3)}" if np.isfinite(r.sd) else _num(r.mean, 4)
            )
        rows.append(row)
    return pd.DataFrame(rows).fillna(NA)


def _metric_label(task: str, column: str) -> str:
    """The report's name of a `pretext_<metric>` column: the paper tasks' labels here, a registered task's
    own (`PretextTask.metric_labels`), else the column name."""
    if column in PRETEXT_LABELS:
        return PRETEXT_LABELS[column]
    spec = pretext.TASKS.get(task)
    own = dict(spec.metric_labels) if spec is not None else {}
    return own.get(column.removeprefix("pretext_"), column)


def _reference_display(refs: pd.DataFrame) -> pd.DataFrame:
    """``analysis.pretext_reference_table`` rows as text: model vs best learning-free reference per metric."""
    rows = []
    for r in refs.itertuples(index=False):
        label = (
            REGION_LABELS.get(r.task, r.metric)
            if r.metric == "region_mse"
            else REFERENCE_METRIC_LABELS.get(r.metric) or _metric_label(r.task, f"pretext_{r.metric}")
        )
        if r.metric == A.BIHARMONIC_METRIC and np.isfinite(r.images):
            label += f" ({r.images:.0f} images)"
        judged = f"{r.n_better} of {r.n_judged} seeds"
        rows.append(
            {
                "Self-supervision method": r.arm_title,
                "Metric": label + (" (headline)" if r.headline else ""),
                "n seeds": r.n,
                "Model": _spread(r.model_mean, r.model_sd),
                "Best reference": f"{_reference_names(r.reference)}: {_spread(r.ref_mean, r.ref_sd)}",
                "Model / reference": _num(r.ratio_mean, 3),
                "Model better": ("learned on " if r.headline else "better on ") + judged,
            }
        )
    return pd.DataFrame(rows)


def _reference_names(names: str) -> str:
    """``"identity/meanfill"`` -> ``"identity/mean fill"``."""
    return "/".join(REFERENCE_SHORT.get(n, n) for n in names.split("/"))


def _spread(mean: float, sd: float) -> str:
    return f"{_num(mean, 4)} \u00b1 {_num(sd, 3)}" if np.isfinite(sd) else _num(mean, 4)


def _probe_display(probe: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        ({LABELS_COLUMN: [_percent(f) for f in probe[A.LABEL_FRACTION]]} if with_fraction else {})
        | {
            "Arm": probe["arm_title"],
            "n seeds": probe["n"],
            "probe AUC (%)": [_mean_sd(m, s, "test_auc") for m, s in zip(probe["mean"], probe["sd"])],
            "C (median)": [_num(c, 3) for c in probe["c_median"]],
        }
    )


def _probe_comparison_display(comp: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        ({LABELS_COLUMN: [_percent(f) for f in comp[A.LABEL_FRACTION]]} if with_fraction else {})
        | {
            "Arm": comp["arm_title"],
            "n pairs": comp["n"],
            "Baseline (%)": [_value(v, "test_auc") for v in comp["mean_baseline"]],
            "Arm (%)": [_value(v, "test_auc") for v in comp["mean_arm"]],
            "\u0394 (pp)": [_diff(100 * d, "test_auc", signed=True) for d in comp["mean_diff"]],
            "p Wilcoxon": [_p(p) for p in comp["p_wilcoxon"]],
            "Holm p": [_p(p) for p in comp["p_holm"]],
            "P(improve)": [_num(v, 2) for v in comp["prob_improvement"]],
        }
    )


def _kv_table(items: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"key": list(items), "value": [str(v) for v in items.values()]})


# ------------------------------------------------------------------------------------- computing the report


@dataclass
class RunAnalysis:
    """Everything the report states about one run, computed once by ``analyse_run``; the section functions
    only format it. Frames are ``analysis`` outputs (their docstrings give the columns)."""

    run_dir: Path
    metric: str  # results-table column of the primary metric, e.g. "test_auc"
    alpha: float
    family: Literal["study", "regime"]
    df: pd.DataFrame  # load_run: every trial x regime, excluded trials included
    excluded: pd.DataFrame  # split_valid's excluded rows, with reasons
    summary: pd.DataFrame  # summarise
    pairing: A.Pairing | None  # None when the table is not paired by seed (pairing_error says why)
    pairing_error: str
    comparisons: pd.DataFrame  # compare_to_baseline + simulate.power_planning + pretext_learned_seeds
    null_rates: dict[str, float]  # simulate.null_rejection_rates for this design ({} without comparisons)
    friedmans: list[dict[str, Any]]  # friedman, one per (label fraction, regime) cell
    pretext_tables: dict[str, pd.DataFrame]  # pretext_tables, by table name
    pretext_refs: pd.DataFrame  # pretext_reference_table
    learned: pd.DataFrame  # pretext_learned
    probe: pd.DataFrame  # probe_table
    probe_comparisons: pd.DataFrame  # probe_comparisons (empty without pairing)
    curves: pd.DataFrame | None  # learning_curves; None when unusable (history_why says why)
    history_why: str
    examples: dict[str, Example]
    example_notes: list[str]
    manifest: dict[str, Any] | None
    manifest_why: str
    efficiency: pd.DataFrame = field(default_factory=pd.DataFrame)  # label_efficiency of the primary metric
    phase_costs: pd.DataFrame = field(default_factory=pd.DataFrame)  # cost.phase_costs
    cost_benefit: pd.DataFrame = field(default_factory=pd.DataFrame)  # cost.cost_benefit of the comparisons

    @property
    def label(self) -> str:
        return A.metric_label(self.metric)

    @property
    def fractions(self) -> list[float]:
        return A.label_fractions(self.df)

    @property
    def several_fractions(self) -> bool:
        """A label-efficiency study: tables gain a "Labels" column, sentences name the fraction."""
        return len(self.fractions) > 1


def analyse_run(
    run_dir: str | Path,
    metric: str = "test_auc",
    *,
    alpha: float = 0.05,
    family: Literal["study", "regime", "table"] = "study",
    strict: bool = False,
) -> RunAnalysis:
    """Read a run dir and compute every table of its report (writes nothing). See ``write_report``."""
    run_dir = Path(run_dir)
    df = A.load_run(run_dir)
    metric = A.metric_column(metric, df.columns)
    manifest, manifest_why = _read_manifest(run_dir)
    history, history_why = _read_history(run_dir)
    examples, example_notes = _read_examples(run_dir)
    _, excluded = A.split_valid(df)

    pairing: A.Pairing | None = None
    pairing_error = ""
    try:
        pairing = A.check_pairing(df, metric)
    except A.PairingError as e:
        if strict:
            raise
        pairing_error = str(e)
    comp = (
        A.compare_to_baseline(df, metric, alpha=alpha, family=family, pairing=pairing)
        if pairing is not None
        else pd.DataFrame(columns=A.COMPARISON_COLUMNS)
    )
    null_rates: dict[str, float] = {}
    if len(comp):
        comp = pd.concat([comp, S.power_planning(comp, alpha)], axis=1)
        # Each (label fraction, regime) cell is one independent family of the simulation.
        null_rates = S.null_rejection_rates(
            int(comp["n"].median()), comp["arm"].nunique(), _n_cells(comp), alpha
        )
    refs = A.pretext_reference_table(df)
    learned = A.pretext_learned(refs)
    comp = comp.assign(
        pretext_learned_seeds=comp["arm"].map(dict(zip(learned["arm"], learned["learned_seeds"])))
    )

    curves = None
    if history is not None:
        if A.LABEL_FRACTION not in history:  # a history.csv older than its results.csv's column
            fractions = dict(zip(df["trial_id"], df[A.LABEL_FRACTION]))
            history = history.assign(**{A.LABEL_FRACTION: history["trial_id"].map(fractions).fillna(1.0)})
        curves = A.learning_curves(history, exclude_trials=excluded["trial_id"].unique())
        if curves.empty:
            curves, history_why = None, "history.csv has no finite fine-tune validation loss/AUC values"
    summary = A.summarise(df)
    return RunAnalysis(
        run_dir=run_dir,
        metric=metric,
        alpha=alpha,
        family=A._family(family),
        df=df,
        excluded=excluded,
        summary=summary,
        pairing=pairing,
        pairing_error=pairing_error,
        comparisons=comp,
        null_rates=null_rates,
        friedmans=[
            A.friedman(df, metric, r, alpha, label_fraction=f, pairing=pairing) for f, r in pairing.cells
        ]
        if pairing is not None
        else [],
        pretext_tables=A.pretext_tables(df),
        pretext_refs=refs,
        learned=learned,
        probe=A.probe_table(df),
        probe_comparisons=A.probe_comparisons(df) if pairing is not None else pd.DataFrame(),
        curves=curves,
        history_why=history_why,
        examples=examples,
        example_notes=example_notes,
        manifest=manifest,
        manifest_why=manifest_why,
        efficiency=A.label_efficiency(summary, metric, 1 - alpha),
        phase_costs=C.phase_costs(df),
        cost_benefit=C.cost_benefit(df, comp),
    )


def _n_cells(comp: pd.DataFrame) -> int:
    """(label fraction, regime) cells among comparison rows."""
    return len(comp.drop_duplicates([A.LABEL_FRACTION, "regime"]))


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
    _write_csv(a.comparisons, d / "comparisons.csv")
    friedman = pd.DataFrame(
        [
            {
                **{k: v for k, v in f.items() if k not in ("mean_ranks", "cliques", "arms", "dropped_seeds")},
                "mean_ranks": json.dumps(f["mean_ranks"]),
                "cliques": json.dumps(f["cliques"]),
                "dropped_seeds": json.dumps(f["dropped_seeds"]),
            }
            for f in a.friedmans
        ]
    )
    _write_csv(friedman, d / "friedman.csv")
    for name, table in a.pretext_tables.items():
        if name in PAPER_PRETEXT_TABLES or not table.empty:
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


def write_report(
    run_dir: str | Path,
    metric: str = "test_auc",
    *,
    alpha: float = 0.05,
    family: Literal["study", "regime", "table"] = "study",
    strict: bool = False,
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html``, ``summary.csv``, ``comparisons.csv`` (and ``friedman.csv``,
    ``pretext_rotation.csv``, ``pretext_image.csv``, ``pretext_<table>.csv`` of another registered task
    table the run has arms in, ``pretext_reference.csv``, ``probe.csv``, ``excluded.csv``) and
    ``figures/*.png`` into ``run_dir``.

    ``metric``: the primary metric for the inferential comparisons (other metrics are descriptive only, so
    the multiple-comparison family stays the one stated). ``family``: the Holm family of the headline p,
    ``"study"`` (default: every comparison, study-wise false-positive rate <= alpha) or ``"regime"``
    (``analysis.compare_to_baseline``); the report states the study-wise rate either implies.
    A table that is not paired by seed is reported as a warning with descriptive tables only, unless ``strict`` (then ``PairingError`` is raised).
    Nothing is written outside ``run_dir``: a symlink at an output's name is replaced by the file (never written
    through), a ``figures`` symlink by a real folder, and only figure names the report draws are deleted; a
    folder where an output goes is an ``AnalysisError``.
    Returns ``(md_path, html_path)``.
    """
    a = analyse_run(run_dir, metric, alpha=alpha, family=family, strict=strict)
    md_path, html_path = _output_path(a.run_dir / "report.md"), _output_path(a.run_dir / "report.html")
    fig_dir = _figure_dir(a.run_dir)
    write_tables(a)
    blocks = report_blocks(a, fig_dir)
    _write_text(md_path, render_markdown(blocks, a.run_dir))
    _write_text(html_path, render_html(blocks, TITLE))
    return md_path, html_path


def _is_figure_name(name: str) -> bool:
    """A file name the report draws into figures/ (``examples_<task>.png`` for any task)."""
    return name in FIGURE_NAMES or (name.startswith("examples_") and name.endswith(".png"))


FIGURE_NAMES = frozenset(
    {"forest.png", "label_efficiency.png", "paired_seeds.png", "mean_ranks.png", "learning_curves.png"}
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


TITLE = "Self-supervised pre-training for melanoma classification: study report"


def report_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    """The whole document, section by section; figures are drawn into ``fig_dir``."""
    return [
        *_title_blocks(a),
        *_method_blocks(a),
        *_headline_blocks(a, fig_dir),
        *_table1_blocks(a),
        *_label_efficiency_blocks(a, fig_dir),
        *_comparison_blocks(a, fig_dir),
        *_friedman_blocks(a, fig_dir),
        *_metrics_blocks(a),
        *_stop_epoch_blocks(a),
        *_curve_blocks(a, fig_dir),
        *_pretext_blocks(a, fig_dir),
        *_cost_blocks(a),
        *_probe_blocks(a),
        *_excluded_blocks(a),
        *_data_blocks(a.manifest, a.manifest_why),
        *_manifest_blocks(a.manifest, a.manifest_why),
    ]


# ---------------------------------------------------------------------------------------------- sections


def _title_blocks(a: RunAnalysis) -> list[Block]:
    df = a.df
    arms, regimes = A.arm_order(df["arm"]), A.regime_order(df["regime"])
    seeds = sorted(df["seed"].unique())
    preset = (a.manifest or {}).get("preset")
    fractions = a.fractions
    if a.several_fractions:
        labels = (
            f" \u00d7 {len(fractions)} label fractions ({', '.join(_percent(f) for f in fractions)} of the "
            "training labels; for one seed every arm fine-tunes on the same labelled subset, and a smaller "
            "fraction's subset lies inside a larger one's)"
        )
    else:
        # One fraction: said only when it is not all labels (a report of all labels reads as before).
        labels = (
            "" if fractions[0] == 1.0 else f"; fine-tuned on {_percent(fractions[0])} of the training labels"
        )
    return [
        Heading(1, TITLE),
        Para(
            f"Run: {a.run_dir.name}" + (f" (preset {preset})" if preset else "") + f". "
            f"{df['trial_id'].nunique()} trials: {len(arms)} arm(s) "
            f"({', '.join(A.arm_title(x) for x in arms)}) \u00d7 {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))})"
            + (labels if a.several_fractions else "")
            + f"; early-stopping regimes: {', '.join(A.regime_title(r) for r in regimes)}"
            + ("" if a.several_fractions else labels)
            + "."
        ),
    ]


def _method_blocks(a: RunAnalysis) -> list[Block]:
    """What was done, one paragraph per kind of test, each only when that test ran."""
    paras = [_comparison_method(a), _friedman_method(a), _pretext_method(a), _probe_method(a)]
    return [Heading(2, "Method"), *(Para(p) for p in paras if p)]


def _comparison_method(a: RunAnalysis) -> str:
    comp, alpha = a.comparisons, a.alpha
    design = (
        "Each seed fixes the data split, the validation split and the fine-tune order for every arm; the "
        "stopping epoch of each early-stopping regime is chosen on validation loss, never on a test metric."
    )
    if comp.empty:
        why = "the table is not paired by seed" if a.pairing_error else "only the baseline arm was run"
        return f"{design} No paired comparison was computed ({why}): every table below is descriptive."
    m, n_ssl, n_reg = len(comp), comp["arm"].nunique(), comp["regime"].nunique()
    several, n_frac = a.several_fractions, comp[A.LABEL_FRACTION].nunique()
    level = round((1 - alpha) * 100)
    if a.family == "study":
        family = (
            f"all m = {m} comparisons of the study ({n_ssl} self-supervised arm(s) \u00d7 {n_reg} regime(s)"
            + (f" \u00d7 {n_frac} label fractions)" if several else ")")
        )
    elif several:
        family = f"the m = {n_ssl} comparison(s) within each regime of each label fraction"
    else:
        family = f"the m = {n_ssl} comparison(s) within each regime (each regime is one row of the paper's Table 1)"
    where = (
        "separately in each regime of each label fraction (paired on seed and fraction: for one seed every arm "
        "fine-tunes on the same labelled subset)"
        if several
        else "separately in each regime"
    )
    return (
        f"{design} Each self-supervised arm is compared with the no-self-supervision baseline through "
        f"per-seed paired differences (arm \u2212 baseline) of test {a.label}, {where}; "
        "differences equal up to floating-point error (relative 1e-9) count as ties or zeros. Headline test: "
        "two-sided Wilcoxon signed-rank test on the paired differences (exact null distribution without "
        "ties, an exhaustive sign-flip permutation test with ties and n \u2264 13, the normal approximation "
        "otherwise; zero differences dropped, a comparison whose differences are all zero has p = 1), "
        f"Holm-corrected across {family} at \u03b1 = {alpha:g}. {_studywise_text(a)} Intervals "
        f"({level} %, not adjusted for multiplicity): the Hodges\u2013Lehmann estimate of the paired "
        "difference with its exact signed-rank confidence interval (Walsh averages), the interval that "
        f"belongs to the headline test (without ties or zeros it excludes 0 exactly when the uncorrected "
        f"Wilcoxon p \u2264 {alpha:g}; achieved level in comparisons.csv, hl_ci_level), and the t-interval of "
        "the mean difference. Also reported: paired t-test, Hedges' g_z, matched-pairs rank-biserial "
        "correlation r_rb and the share of seeds on which the arm beats the baseline (ties count half), all "
        "positive when the arm is better (also for lower-is-better metrics), and a planning range of seeds "
        "for 80 % power of the headline procedure itself (simulated). Seeds whose trial diverged or failed "
        "are dropped pairwise and listed under Excluded trials. Other metrics are descriptive only."
    )


def _studywise_text(a: RunAnalysis) -> str:
    """The study-wise false-positive rate of the chosen family (and of the other), from the simulation."""
    r, comp = a.null_rates, a.comparisons
    if not r:
        return ""
    n, k, n_reg = int(comp["n"].median()), comp["arm"].nunique(), comp["regime"].nunique()
    n_frac = comp[A.LABEL_FRACTION].nunique()
    chosen, other = (
        ("studywise_study", "studywise_regime")
        if a.family == "study"
        else (
            "studywise_regime",
            "studywise_study",
        )
    )
    if a.several_fractions:
        other_name = "per regime and label fraction" if a.family == "study" else "across the whole study"
        design = f"{k} arm(s) \u00d7 {n_reg} regime(s) \u00d7 {n_frac} label fractions"
        independent = "regimes and fractions independent"
    else:
        other_name = "per regime" if a.family == "study" else "across the whole study"
        design, independent = f"{k} arm(s) \u00d7 {n_reg} regime(s)", "regimes independent"
    text = (
        "Study-wise false-positive rate (the chance that a study with no true effect lists at least one "
        f"significant comparison), simulated for this design ({n} seeds, {design}, "
        f"{r['n_sim']} null studies, normal differences, {independent}): {_rate(r[chosen])} with this "
        f"family, {_rate(r[other])} with Holm {other_name}."
    )
    need = int(comp["min_n_for_significance"].max())
    if a.family == "study" and n < need:
        text += f" With {n} seeds no comparison can be significant in this family (it needs at least {need})."
    return text


def _friedman_method(a: RunAnalysis) -> str:
    if not any(np.isfinite(f["p"]) for f in a.friedmans):
        return ""
    return (
        f"Across all arms: a Friedman test per regime{' and label fraction' if a.several_fractions else ''} on "
        "the seeds complete for every arm, with mean "
        f"ranks and the Nemenyi critical difference at \u03b1 = {a.alpha:g} (descriptive)."
    )


def _pretext_method(a: RunAnalysis) -> str:
    if a.pretext_refs.empty:
        return ""
    used = {n for r in a.pretext_refs["reference"] for n in r.split("/")}
    titles = ", ".join(A.REFERENCE_TITLES[n] for n in A.TRIVIAL_REFERENCES if n in used)
    classical = (
        " The missing patch is also compared with a classical (biharmonic) inpainter on a subsample of "
        "test images, a stronger bar that is not part of the verdict."
    )
    return (
        "Each pretext metric is set beside the best trivial (learning-free) reference on the same test "
        "pairs" + (f" ({titles})" if titles else "") + "; a pretext counts as learned on a seed when the "
        "model beats that reference on its task's headline metric."
        + (classical if "biharmonic" in used else "")
    )


def _probe_method(a: RunAnalysis) -> str:
    if a.probe.empty:
        return ""
    text = (
        "Linear probe: a logistic regression on the frozen, globally pooled encoder features (after the "
        "pretext phase; the randomly initialised encoder for the baseline), one per trial, scored by "
        "test AUC"
    )
    k = len(a.probe_comparisons)
    if k:
        text += (
            "; each self-supervised arm is compared with the baseline by a two-sided Wilcoxon signed-rank "
            f"test on the per-seed paired differences, Holm-corrected across the {k} "
            + (
                "comparisons (self-supervised arms \u00d7 label fractions)"
                if a.several_fractions
                else "self-supervised arm(s)"
            )
            + f" at \u03b1 = {a.alpha:g}"
        )
    return text + "."


def _headline_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    comp, alpha = a.comparisons, a.alpha
    blocks: list[Block] = [Heading(2, "Headline results")]
    if a.pairing_error:
        blocks.append(
            Box(
                "warning",
                "the results table is not paired by seed; no comparison was computed",
                [a.pairing_error],
            )
        )
    elif comp.empty:
        blocks.append(Para(f"{NA}: only the baseline arm was run, so there is nothing to compare with it."))
    else:
        failed = _failed_pretexts(a.learned)
        if a.several_fractions:
            blocks += _fraction_summary_blocks(a)
        blocks.append(Bullets([r.headline + _learned_suffix(failed.get(r.arm)) for r in comp.itertuples()]))
        under = comp[comp["underpowered"]]
        if len(under):
            need = int(under["min_n_for_significance"].max())
            blocks.append(
                Box(
                    "warning",
                    f"too few seeds: {len(under)} of {len(comp)} comparison(s) cannot reach significance "
                    f"whatever the data; at least {need} non-zero paired differences are needed",
                    _grouped_warnings(under, len(comp)),
                )
            )
        blocks.append(Para(_power_sentence(comp, alpha, a.several_fractions)))
        if _n_cells(comp) > 1:
            blocks.append(Para(_robustness_sentence(a)))
    not_learned = [_not_learned_sentence(r) for r in a.learned.itertuples() if r.majority_failed]
    if not_learned:
        blocks.append(Box("warning", "pretext tasks that did not learn", not_learned))
    for w in A.consistency_warnings(a.df):
        blocks.append(Box("warning", "the arms are not comparable as run", [w]))
    if not comp.empty:
        fraction = a.metric in A.FRACTION_METRICS
        # Grouped by where a comparison lives: its regime, or its label fraction and regime.
        places = [_place(r, a.several_fractions) for r in comp.itertuples()]
        fig = plots.forest_plot(
            comp.assign(regime_title=places),
            f"\u0394 {a.label}" + (" (pp)" if fraction else ""),
            scale=100.0 if fraction else 1.0,
            alpha=alpha,
        )
        path = plots.save_figure(fig, fig_dir / "forest.png")
        level = round((1 - alpha) * 100)
        blocks.append(
            Image(
                path,
                f"Paired differences in {a.label} vs baseline: Hodges\u2013Lehmann estimate with its {level} % "
                "exact signed-rank CI (not adjusted for multiplicity), mean as \u00d7",
            )
        )
    return blocks


def _fraction_summary_blocks(a: RunAnalysis) -> list[Block]:
    """Per label fraction: does any arm beat the baseline (significant in the table's Holm family), with its
    effect and interval; then how the mean difference moves with the fraction (descriptive)."""
    comp, metric = a.comparisons, a.metric
    per = A.fraction_summary(comp)
    family = (
        f"Holm over all m = {len(comp)} comparisons of the study"
        if a.family == "study"
        else f"Holm within each regime of each fraction (m = {comp['arm'].nunique()})"
    )
    lines = []
    for r in per.itertuples(index=False):
        head = f"{A.fraction_title(r.label_fraction)}: "
        sub = comp[comp[A.LABEL_FRACTION] == r.label_fraction]
        better = sub[sub["significant"] & A.arm_better(sub["hl_estimate"], sub["mean_diff"], metric)]
        if len(better):
            listed = "; ".join(
                f"{c.arm_title}, {c.regime_title}: {_effect_text(c, a.alpha)}" for c in better.itertuples()
            )
            text = f"{len(better)} of {r.m} comparisons significant with the arm better ({family}) \u2014 {listed}"
        elif pd.notna(r.best):
            c = comp.loc[int(r.best)]
            text = (
                f"no arm beats the baseline ({family}); most favourable estimate {c['arm_title']}, {c['regime_title']}: "
                f"{_effect_text(c, a.alpha)}"
            )
        else:
            text = f"no arm beats the baseline ({family}); no comparison has an estimate"
        if r.n_worse:
            text += f"; {r.n_worse} significant with the arm worse"
        lines.append(head + text + ".")
    return [
        Para(
            "Per label fraction (does any self-supervised arm beat the baseline at that share of the labels?):"
        ),
        Bullets(lines),
        Para(_fraction_trend_sentence(per, metric)),
    ]


def _effect_text(r: Any, alpha: float) -> str:
    """``"+6.1 pp AUC (Hodges–Lehmann), 95 % signed-rank CI [3.2, 8.8], Holm p = 0.003"`` for a comparison
    row (namedtuple or Series)."""
    get = r.__getitem__ if isinstance(r, pd.Series) else lambda k: getattr(r, k)
    metric = get("metric")
    pp = metric in A.FRACTION_METRICS
    scale = 100.0 if pp else 1.0
    low, high = float(get("hl_ci_low")), float(get("hl_ci_high"))
    ci = (
        f"{round((1 - alpha) * 100)} % signed-rank CI [{A._bound(low * scale, pp)}, {A._bound(high * scale, pp)}]"
        if np.isfinite(low)
        else f"signed-rank CI n/a (n = {int(get('n'))})"
    )
    return (
        f"{A.format_diff(float(get('hl_estimate')), metric)} {A.metric_label(metric)} (Hodges\u2013Lehmann), {ci}, "
        f"Holm p {A.format_p(float(get('p_holm')))}"
    )


def _fraction_trend_sentence(per: pd.DataFrame, metric: str) -> str:
    """How the mean paired difference (over a fraction's arms and regimes) moves with the label fraction."""
    values = "; ".join(
        f"{A.fraction_title(f)} {A.format_diff(v, metric)}"
        for f, v in zip(per[A.LABEL_FRACTION], per["mean_hl"])
    )
    text = (
        f"Mean Hodges\u2013Lehmann difference vs the baseline over each fraction's comparisons (every arm and "
        f"regime, so not inflated by picking the best; descriptive, not a test): {values}."
    )
    gain = per["mean_hl"].to_numpy(dtype=float) * (1.0 if A.higher_is_better(metric) else -1.0)
    if not np.isfinite(gain).all() or len(gain) < 2:
        return text
    top = int(np.argmax(gain))
    where = A.fraction_title(per[A.LABEL_FRACTION].iloc[top])
    if top == 0 and gain[0] > 0:
        shrinking = bool(np.all(np.diff(gain) <= 0))
        text += (
            f" The gain is largest at the fewest labels ({where})"
            + (" and shrinks as labels are added" if shrinking else "")
            + ", the pattern the self-supervised literature reports."
        )
    elif gain[top] > 0:
        text += f" The gain is largest at {where}, not at the fewest labels."
    else:
        text += " No fraction shows a mean gain over the baseline."
    return text


def _failed_pretexts(learned: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{arm: (seeds not learned, seeds judged)}`` for arms whose pretext failed on most seeds."""
    return {
        r.arm: (int(r.n_judged - r.n_learned), int(r.n_judged))
        for r in learned.itertuples()
        if r.majority_failed
    }


def _learned_suffix(failed: tuple[int, int] | None) -> str:
    if failed is None:
        return ""
    return f" \u2014 pretext did not beat its reference on {failed[0]} of {failed[1]} seeds"


def _not_learned_sentence(r: Any) -> str:
    """``r``: a row of ``analysis.pretext_learned``."""
    ref = A.REFERENCE_TITLES.get(r.reference, "its best learning-free reference")
    what = (
        "a task that learned nothing"
        if r.n_learned == 0
        else f"a task that learned on only {r.n_learned} of {r.n_judged} seeds"
    )
    return (
        f"{r.arm_title} did not beat {ref} on {r.n_judged - r.n_learned} of {r.n_judged} seeds: its "
        f"fine-tune comparison tests the pretext weights of {what}."
    )


PLANNING_EFFECTS = (0.8, 1.0, 1.5, 2.0)


def _grouped_warnings(under: pd.DataFrame, n_comparisons: int) -> list[str]:
    """One line per distinct reason: comparisons with the same seeds share one explanation (`warning` is
    "<arm> vs baseline, <regime>: <reason>")."""
    groups: dict[str, list[str]] = {}
    for text in under["warning"]:
        who, _, why = str(text).partition(": ")
        groups.setdefault(why or who, []).append(who)
    lines = []
    for why, who in groups.items():
        if len(who) == 1:
            lines.append(f"{who[0]}: {why}")
        else:
            label = f"all {len(who)} comparisons" if len(who) == n_comparisons else "; ".join(who)
            lines.append(f"{label[0].upper()}{label[1:]}: {why}")
    return lines


def _place(r: Any, with_fraction: bool) -> str:
    """Where comparison row ``r`` (a namedtuple of comparisons) lives: its regime, with its label fraction."""
    return A.cell_title(getattr(r, A.LABEL_FRACTION, 1.0), r.regime_title, with_fraction)


def _power_sentence(comp: pd.DataFrame, alpha: float, with_fraction: bool = False) -> str:
    m = int(comp["family_size"].max())
    reference = " / ".join(_seeds(S.seeds_for_headline_power(e, m, alpha)) for e in PLANNING_EFFECTS)
    procedure = (
        f"the headline procedure (two-sided exact Wilcoxon, Holm over m = {m}, \u03b1 = {alpha:g}; "
        f"simulated, {S.N_SIM} studies per seed count)"
    )
    tail = (
        f" For reference, at a true d_z of {' / '.join(f'{e:g}' for e in PLANNING_EFFECTS)} it needs "
        f"{reference} seeds."
    )
    parts = [
        f"{r.arm_title}, {_place(r, with_fraction)}: {_seed_range(r.seeds_80_min, r.seeds_80_max)}"
        for r in comp.itertuples(index=False)
        if not r.significant and "seeds_80_min" in comp
    ]
    if not parts:
        return f"Every comparison is significant after Holm correction.{tail}"
    return (
        f"Power planning: seeds {procedure} would need for 80 % power, if the true effect lay anywhere in "
        "each non-significant comparison's 80 % CI of d_z (a range, not a point: an effect observed on few "
        "seeds is noisy; a low end at or below the seeds run means only that such an effect is plausible): "
        + "; ".join(parts)
        + "."
        + tail
    )


def _rate(x: float | None) -> str:
    return NA if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def _robustness_sentence(a: RunAnalysis) -> str:
    comp, alpha, rates = a.comparisons, a.alpha, a.null_rates
    m, k = len(comp), comp["arm"].nunique()
    n = int(comp["n_nonzero"].max())
    several = a.several_fractions
    per = "per regime and label fraction" if several else "per regime"
    if a.family == "study":
        alt = comp[comp["p_holm_regime"] < alpha]
        listed = "; ".join(f"{r.arm_title}, {_place(r, several)}" for r in alt.itertuples())
        return (
            f"Robustness: with Holm {per} instead (over the {k} arm(s) of each regime"
            + (" of each fraction" if several else "")
            + "; study-wise "
            f"false-positive rate {_rate(rates.get('studywise_regime'))} for this design), "
            + (f"{len(alt)} comparison(s) would be significant: {listed}" if len(alt) else "none would be")
            + " (p_holm_regime in comparisons.csv)."
        )
    sig = comp[comp["significant"]]
    need = A.min_n_for_significance(alpha, m)
    floor = f"; that family needs at least {need} non-zero paired differences"
    if n < need:
        floor += f", more than this run's {n}, so it cannot reject here"
    if sig.empty:
        return (
            f"Robustness: no comparison is significant with Holm {per}, so none is with Holm across all "
            f"{m} comparisons of the study either (p_holm_study in comparisons.csv{floor})."
        )
    strict = sig[sig["p_holm_study"] < alpha]
    listed = "; ".join(f"{r.arm_title}, {_place(r, several)}" for r in strict.itertuples())
    return (
        f"Robustness: with Holm across all {m} comparisons of the study instead of {per}, "
        f"{len(strict)} of {len(sig)} significant comparison(s) remain significant"
        + (f": {listed}" if listed else "")
        + f" (p_holm_study in comparisons.csv{floor})."
    )


def _table1_blocks(a: RunAnalysis) -> list[Block]:
    metric, summary, several = a.metric, a.summary, a.several_fractions
    per = "arm, regime and label fraction" if several else "arm and regime"
    labels = "; Labels: the share of the training labels the fine-tune saw" if several else ""
    blocks: list[Block] = [
        Heading(2, f"Table 1: test {a.label} per {per}"),
        Table(
            _paper_layout(summary, metric, several),
            f"Mean \u00b1 SD over seeds, {_unit(metric) or 'raw units'}; status-ok trials{labels}.",
        ),
    ]
    if metric != "test_soft_accuracy":
        blocks.append(Heading(3, "Table 1 (soft accuracy, the paper's \u201caccuracy\u201d)"))
        blocks.append(
            Table(_paper_layout(summary, "test_soft_accuracy", several), "Mean \u00b1 SD over seeds, %.")
        )
    blocks.append(
        Table(
            _paper_reference(),
            "The paper's Table 1 (soft accuracy, %, a single run per cell"
            + (", all training labels" if several else "")
            + ") for reference.",
        )
    )
    return blocks


def _label_efficiency_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    """A study of several label fractions: the metric vs the fraction per arm (figure) and each arm's paired
    difference from the baseline per fraction (table). Nothing for a study of one fraction."""
    if not a.several_fractions:
        return []
    metric, comp, alpha = a.metric, a.comparisons, a.alpha
    level = round((1 - alpha) * 100)
    pp = metric in A.FRACTION_METRICS
    scale = 100.0 if pp else 1.0
    fractions = ", ".join(_percent(f) for f in a.fractions)
    blocks: list[Block] = [
        Heading(2, f"Label efficiency: test {a.label} vs label fraction"),
        Para(
            f"Every arm was fine-tuned on {fractions} of the training labels. For one seed every arm sees the "
            "same labelled subset, and a smaller fraction's subset lies inside a larger one's; the pretext "
            "phase does not use labels, so one pretext model per task and seed serves every fraction (the "
            "pretext tables below count it once). Self-supervised pre-training is expected to help most "
            "where labels are fewest: the lower panels and the table show each arm's paired difference from "
            "the baseline at each fraction."
        ),
    ]
    levels = a.efficiency
    clipped = False
    if pp:  # a t-interval on few seeds can leave [0, 1]; drawn within the metric's range
        bounds = levels[["ci_low", "ci_high"]]
        clipped = bool(((bounds < 0) | (bounds > 1)).any().any())
        levels = levels.assign(ci_low=levels["ci_low"].clip(0, 1), ci_high=levels["ci_high"].clip(0, 1))
    fig = plots.label_efficiency_plot(
        levels,
        comp if len(comp) else None,
        f"test {a.label}" + (" (%)" if pp else ""),
        f"\u0394 {a.label} vs baseline" + (" (pp)" if pp else ""),
        scale=scale,
        alpha=alpha,
    )
    path = plots.save_figure(fig, fig_dir / "label_efficiency.png")
    caption = (
        f"Test {a.label} vs label fraction (log axis), one panel per early-stopping regime. Top: mean over "
        f"seeds with its {level} % t-interval, per arm (unpaired: the seed effect stays in, so overlapping "
        "intervals do not mean no difference)" + ("; intervals cut at 0 and 100 %" if clipped else "")
    )
    if len(comp):
        caption += (
            f"; bottom: paired difference vs the baseline, Hodges\u2013Lehmann estimate with its {level} % "
            f"exact signed-rank CI (not adjusted for multiplicity), filled: Holm p < {alpha:g}"
        )
    blocks.append(Image(path, caption + "."))
    if len(comp):
        blocks.append(
            Table(
                _fraction_difference_table(comp, metric),
                "Hodges\u2013Lehmann difference arm \u2212 baseline"
                + (" in percentage points" if pp else "")
                + f" with its {level} % exact signed-rank CI, per label fraction; * significant after Holm "
                f"({'all ' + str(len(comp)) + ' comparisons of the study' if a.family == 'study' else 'per regime and fraction'}). "
                "Full precision in comparisons.csv; per-arm means in label_efficiency.csv.",
            )
        )
    return blocks


def _fraction_difference_table(comp: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows = regime x arm, columns = label fractions; cells ``"+4.1 [0.3, 7.9] *"`` (HL estimate, its CI,
    * when significant)."""
    scale = 100.0 if metric in A.FRACTION_METRICS else 1.0
    fractions = sorted(comp[A.LABEL_FRACTION].unique())
    rows = []
    for (regime, arm), g in comp.groupby(["regime", "arm"], sort=False):
        row = {"Regime": g["regime_title"].iloc[0], "Arm": g["arm_title"].iloc[0]}
        by_f = g.set_index(A.LABEL_FRACTION)
        for f in fractions:
            if f not in by_f.index:
                row[_percent(f)] = NA
                continue
            r = by_f.loc[f]
            cell = _diff(r["hl_estimate"] * scale, metric, signed=True)
            if np.isfinite(r["hl_ci_low"]):
                cell += (
                    f" [{_diff(r['hl_ci_low'] * scale, metric)}, {_diff(r['hl_ci_high'] * scale, metric)}]"
                )
            row[_percent(f)] = cell + (" *" if r["significant"] else "")
        rows.append(row)
    return pd.DataFrame(rows)  # comparisons are ordered by fraction, regime, arm: rows keep regime, arm


def _comparison_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "All comparisons with the baseline")]
    if a.comparisons.empty:
        why = "the table is not paired (see above)." if a.pairing_error else "no arm besides the baseline."
        blocks.append(Para(f"{NA}: {why}"))
    else:
        blocks.append(
            Table(
                _comparison_display(a.comparisons, a.alpha, a.several_fractions),
                "Means in % for fractions; differences and intervals in percentage points. HL: "
                "Hodges\u2013Lehmann estimate with its exact signed-rank CI (Walsh averages), the interval of "
                "the headline test; t-CI: t-interval of the mean difference; neither adjusted for "
                "multiplicity. Holm p is the headline. g_z, r_rb, P(improve): positive = arm better. Seeds for "
                "80 % power: the headline procedure simulated across the 80 % CI of the effect (a planning "
                "range). Full precision in comparisons.csv.",
            )
        )
    if a.pairing is not None:
        panels = []
        s = a.summary[a.summary["metric"] == a.metric]
        means = s.set_index([A.LABEL_FRACTION, "regime", "arm"])["mean"]
        several = a.several_fractions
        for f, regime in a.pairing.cells:
            mat, _, arm_cols = A.paired_matrix(a.df, a.metric, regime, label_fraction=f, pairing=a.pairing)
            title = A.cell_title(f, A.regime_title(regime), several)
            panels.append((title, mat, arm_cols, [means.get((f, regime, x), np.nan) for x in arm_cols]))
        scale = 100.0 if a.metric in A.FRACTION_METRICS else 1.0
        fig = plots.paired_seeds_plot(
            panels,
            f"test {a.label}" + (" (%)" if scale == 100 else ""),
            scale=scale,
            ncols=len(a.pairing.regimes) if several else None,
        )
        blocks.append(Image(plots.save_figure(fig, fig_dir / "paired_seeds.png"), f"Per-seed test {a.label}"))
    return blocks


def _friedman_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "All arms together: Friedman test and mean ranks")]
    if not a.friedmans:
        return blocks + [Para(f"{NA}: the table is not paired by seed.")]
    blocks.append(
        Para(
            "Friedman test over all arms per regime"
            + (" and label fraction" if a.several_fractions else "")
            + " (complete seeds only), with the Nemenyi critical "
            f"difference CD = q\u03b1\u221a(k(k+1)/(6N)) at \u03b1 = {a.alpha:g}. Descriptive: Nemenyi "
            "depends on which arms are in the pool, so the pairwise Holm-corrected Wilcoxon tests above are "
            "the headline."
        )
    )
    several = a.several_fractions
    blocks.append(Table(_friedman_table(a.friedmans, several)))
    if any(f["k"] >= 3 and f["n"] >= 2 for f in a.friedmans):
        titles = [
            A.cell_title(f[A.LABEL_FRACTION], A.regime_title(f["regime"]), several) for f in a.friedmans
        ]
        fig = plots.mean_rank_plot(list(zip(titles, a.friedmans)))
        path = plots.save_figure(fig, fig_dir / "mean_ranks.png")
        per = "per regime and label fraction" if several else "per regime"
        blocks.append(Image(path, f"Mean ranks and critical difference {per}"))
    return blocks


def _metrics_blocks(a: RunAnalysis) -> list[Block]:
    return [
        Heading(2, "All classification metrics"),
        Table(
            _all_metrics_table(a.summary, a.several_fractions),
            "Mean \u00b1 SD over seeds, %; descriptive (summary.csv has median and IQR).",
        ),
    ]


def _stop_epoch_blocks(a: RunAnalysis) -> list[Block]:
    return [
        Heading(2, "Stop epochs"),
        Table(
            _stop_epoch_table(a.summary, a.several_fractions),
            "Fine-tune epoch at which each regime stopped: mean \u00b1 SD; median [Q1, Q3]. An early stop "
            "at the first epochs with chance-level validation accuracy points to unsettled BatchNorm "
            "statistics.",
        ),
    ]


def _curve_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Learning curves")]
    if a.curves is None:
        return blocks + [Para(f"{NA}: {a.history_why}.")]
    fig = plots.learning_curves_plot(
        a.curves, [("val_loss", "validation loss"), ("val_auc", "validation AUC")]
    )
    path = plots.save_figure(fig, fig_dir / "learning_curves.png")
    per = " (one row per label fraction)" if a.curves[A.LABEL_FRACTION].nunique() > 1 else ""
    return blocks + [Image(path, f"Validation loss and AUC per fine-tune epoch{per}")]


# The paper's pretext tables, by `PretextTask.table`: (heading, caption, what an empty one says). Shown in
# every report; another registered table is shown when the run has an arm with finite metrics in it.
PAPER_PRETEXT_TABLES = {
    "rotation": (
        "Table 2: rotation prediction",
        "Mean \u00b1 SD across seeds of each test-set metric. Scaled values are angle/360; circular "
        "differences take the shorter way round the circle (the paper's are not circular).",
        "no rotation arm",
    ),
    "image": (
        "Table 3: missing patch and corruption removal",
        "Mean \u00b1 SD across seeds; each seed's value is the mean (or SD) over test images of MSE "
        "(0\u2013255 scale) and SSIM on de-processed images.",
        "no image pretext arm",
    ),
}


def _pretext_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    refs = a.pretext_refs
    blocks: list[Block] = [Heading(2, "Pretext tasks (paper Tables 2 and 3)")]
    for name, table in a.pretext_tables.items():
        tasks = [t.name for t in pretext.TASKS.values() if t.table == name]
        if name in PAPER_PRETEXT_TABLES:
            heading, caption, empty = PAPER_PRETEXT_TABLES[name]
            kind = name
        elif table.empty:
            continue
        else:
            kind = " and ".join(A.task_title(t) for t in tasks)
            heading, caption = f"Pretext: {kind}", "Mean \u00b1 SD across seeds of each test-set metric."
        blocks.append(Heading(3, heading))
        if table.empty:
            blocks.append(Para(f"{NA}: {empty} with finite pretext metrics in this run."))
            continue
        blocks.append(Table(_pretext_display(table), caption))
        blocks += _reference_blocks(refs[refs["task"].isin(tasks)], kind)
    unregistered = A.unregistered_tasks(a.df)
    if unregistered:
        blocks.append(
            Para(
                f"Pretext metrics of {', '.join(unregistered)} are not tabulated: no such task is registered "
                "where this report was made (import the module that registers it, then run `study report`)."
            )
        )
    return blocks + _example_blocks(a, fig_dir)


def _reference_blocks(refs: pd.DataFrame, kind: str) -> list[Block]:
    if refs.empty:
        return [
            Para(
                f"This run recorded no learning-free reference for its {kind} pretext metrics (pretext_ref_* "
                "columns), so they cannot be judged against what a model that learned nothing would score."
            )
        ]
    caption = (
        "Model vs the best trivial (learning-free) reference on the same test pairs, mean \u00b1 SD over "
        "seeds; model / reference is the mean over seeds of the per-seed ratio; \u201clearned\u201d: the "
        "model beats the reference on the task's headline metric."
    )
    if (refs["reference"] == "initial").any():  # the two-view tasks' reference (study.train.contrastive)
        caption += (
            " Initial: the same encoder before its pretext phase (random weights unless the trial starts "
            "from ImageNet), scored on the same test views; chance top-1 is 1/(2B−1) for groups of B images."
        )
    if kind == "image":  # the image tasks' references (study.tasks.references)
        caption += (
            " Identity: the corrupted input itself; mean fill: the hole filled with the mean colour; the "
            "composite keeps the visible pixels and takes only the hole from the model; the biharmonic "
            "inpainter runs on a subsample of test images, compared with the model on the same images."
        )
    return [Table(_reference_display(refs), caption)]


def _example_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading(3, "Pretext examples")]
    if not a.examples:
        blocks.append(
            Para(
                f"{NA}: no examples/<task>_seed<seed>.npz files with examples in the run dir (image tasks, "
                "and rotation tasks that recorded angles)."
            )
        )
    for task, ex in sorted(a.examples.items(), key=lambda kv: A.task_rank(kv[0])):
        title = f"{A.arm_title(task)} (seed {ex.seed})"
        if ex.kind == "angle":
            x = ex.arrays
            fig = plots.rotation_example_grid(title, x["inputs"], x["angle_true_deg"], x["angle_pred_deg"])
            caption = f"{A.arm_title(task)}: rotated inputs with true and predicted angle"
        elif ex.kind == "views":
            x = ex.arrays
            fig = plots.example_grid(
                title, x["images"], x["view1"], x["view2"], labels=("image", "view 1", "view 2")
            )
            caption = f"{A.arm_title(task)}: test image and the two augmented views matched to each other"
        else:
            x = ex.arrays
            fig = plots.example_grid(title, x["inputs"], x["targets"], x["outputs"])
            caption = f"{A.arm_title(task)}: input, target, output"
        blocks.append(Image(plots.save_figure(fig, fig_dir / f"examples_{task}.png"), caption))
    if a.example_notes:
        blocks.append(Box("note", "example files that could not be shown", a.example_notes))
    return blocks


def _cost_blocks(a: RunAnalysis) -> list[Block]:
    """The paper's "cost-benefit trade-off": what each arm's pretext phases cost, and the gain they bought."""
    blocks: list[Block] = [Heading(2, "Cost-benefit of the pretext phases")]
    costs = a.phase_costs
    if costs.empty:
        blocks.append(Para(f"{NA}: no self-supervised arm finished a pretext phase in this run."))
        return blocks
    if not np.isfinite(costs["seconds_mean"].to_numpy(float)).any():
        blocks.append(
            Para(
                f"{NA}: this run recorded no pretext cost (runs made before costs were recorded: "
                "pretext_seconds and the other pretext cost columns are missing from results.csv)."
            )
        )
        return blocks
    kinds = {"GPU" if d and d != "CPU" else "CPU" for d in costs["device"].dropna()}
    unit = f"{kinds.pop()}-h" if len(kinds) == 1 else "device-h"
    blocks.append(
        Table(
            _cost_display(costs, unit),
            f"One row per self-supervised arm; a phase is one trained pretext model (trials sharing it, its "
            f"regimes and label fractions, count it once). Time: wall seconds of the phase, mean ± SD "
            f"over phases; {unit}: seconds × CPU threads or GPUs / 3600, per phase and for the whole "
            "study; images: training images drawn (two-view tasks see each as two views); FLOPs: estimated "
            "training FLOPs (3 × the forward pass per training input, plus BYOL's target pass; "
            "convolutions and dense layers only, models.forward_flops). Full precision in cost_benefit.csv.",
        )
    )
    cb = a.cost_benefit
    if cb.empty:
        blocks.append(Para(f"{NA}: no comparison with the baseline, so no gain to set against the cost."))
        return blocks
    metric = cb["metric"].iloc[0]
    blocks.append(
        Table(
            _gain_display(cb, metric, unit, a.alpha, a.several_fractions),
            f"Gain: the mean paired difference arm − baseline in {A.metric_label(metric)} with its "
            f"{round((1 - a.alpha) * 100)} % t-interval (percentage points for fractions; not adjusted for "
            f"multiplicity: the Holm-corrected tests are above), and that gain and interval per {unit} of "
            "one pretext phase (the phase's mean cost taken as known). An interval that includes 0 means "
            "the study cannot tell whether the hours bought anything. The fine-tune is not counted: every "
            "arm, the baseline included, pays it.",
        )
    )
    return blocks


def _cost_display(costs: pd.DataFrame, unit: str) -> pd.DataFrame:
    largest = np.nanmax(costs["flops_mean"].to_numpy(float), initial=0.0)
    flops_unit, flops_scale = next(
        ((u, f) for u, f in (("PFLOP", 1e15), ("TFLOP", 1e12)) if largest >= f), ("GFLOP", 1e9)
    )
    return pd.DataFrame(
        {
            "Arm": [A.arm_title(x) for x in costs["arm"]],
            "Device": [d if isinstance(d, str) else NA for d in costs["device"]],
            "Phases": costs["runs"],
            "Time / phase (s)": [
                _num(m, 3) + (f" ± {_num(sd, 2)}" if np.isfinite(sd) else "")
                for m, sd in zip(costs["seconds_mean"], costs["seconds_sd"])
            ],
            f"{unit} / phase": [_num(x, 3) for x in costs["device_hours_mean"]],
            f"{unit} (study)": [_num(x, 3) for x in costs["device_hours_total"]],
            "Images / phase": [_num(x, 4) for x in costs["images_seen_mean"]],
            f"{flops_unit}s / phase (est.)": [_num(x / flops_scale, 3) for x in costs["flops_mean"]],
        }
    )


def _gain_display(
    cb: pd.DataFrame, metric: str, unit: str, alpha: float, with_fraction: bool
) -> pd.DataFrame:
    scale, pp = (100, " (pp)") if metric in A.FRACTION_METRICS else (1, "")
    level = round((1 - alpha) * 100)
    rows = []

    def diff(x: float) -> str:
        return _diff(x * scale, metric)

    def rate(x: float, signed: bool = False) -> str:
        """Per-hour rates span orders of magnitude (CPU-seconds to GPU-days): whole numbers from 100 on."""
        if not np.isfinite(x):
            return NA
        v = x * scale
        text = f"{v:+,.0f}" if abs(v) >= 100 else f"{v:+.3g}"
        text = text if signed else text.removeprefix("+")
        return "\u2212" + text[1:] if text.startswith("-") else text

    def interval(low: float, high: float, fmt=diff) -> str:
        return f"[{fmt(low)}, {fmt(high)}]" if np.isfinite(low) else NA

    for r in cb.itertuples(index=False):
        rows.append(
            ({LABELS_COLUMN: _percent(r.label_fraction)} if with_fraction else {})
            | {
                "Regime": r.regime_title,
                "Arm": A.arm_title(r.arm),
                "n": r.n,
                f"gain{pp}": _diff(r.gain * scale, metric, signed=True),
                f"{level} % t-CI": interval(r.gain_ci_low, r.gain_ci_high),
                f"gain{pp} per {unit}": rate(r.gain_per_device_hour, signed=True),
                f"{level} % CI per {unit}": interval(
                    r.gain_per_device_hour_ci_low, r.gain_per_device_hour_ci_high, rate
                ),
            }
        )
    return pd.DataFrame(rows)


def _probe_blocks(a: RunAnalysis) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Linear probe (frozen encoder)")]
    if a.probe.empty:
        why = (
            "results.csv has no probe_auc column (the run predates the linear probe)"
            if "probe_auc" not in a.df
            else "no trial has a finite probe_auc"
        )
        return blocks + [Para(f"{NA}: {why}.")]
    blocks.append(
        Para(
            "Test AUC of a logistic regression on frozen, globally pooled encoder features: what the encoder "
            "learned by itself, before any fine-tuning (the baseline's encoder is randomly initialised). "
            "C: the inverse regularisation chosen per trial."
        )
    )
    several = a.several_fractions
    per_fraction = (
        " The probe is fitted on the trial's labelled images, so it is reported per label fraction."
        if several
        else ""
    )
    blocks.append(
        Table(
            _probe_display(a.probe, several),
            f"Mean \u00b1 SD over seeds, %; one probe per trial.{per_fraction}",
        )
    )
    comp = a.probe_comparisons
    if len(comp):
        family = (
            f"the {len(comp)} comparisons (self-supervised arms \u00d7 label fractions)"
            if several
            else f"the {len(comp)} self-supervised arm(s)"
        )
        blocks.append(
            Table(
                _probe_comparison_display(comp, several),
                "Paired by seed (arm \u2212 baseline, percentage points); two-sided Wilcoxon signed-rank "
                f"test, Holm-corrected across {family}, \u03b1 = {a.alpha:g}. "
                "Full precision in probe.csv.",
            )
        )
    elif a.pairing_error:
        blocks.append(
            Para("No paired probe comparison: the table is not paired by seed (see Headline results).")
        )
    return blocks


def _excluded_blocks(a: RunAnalysis) -> list[Block]:
    df, excluded, pairing = a.df, a.excluded, a.pairing
    blocks: list[Block] = [Heading(2, "Excluded trials")]
    n_trials = df["trial_id"].nunique()
    ex = excluded.drop_duplicates("trial_id")
    counts = ex["status"].value_counts()
    blocks.append(
        Para(
            f"{len(ex)} of {n_trials} trials excluded ({int(counts.get('diverged', 0))} diverged, "
            f"{int(counts.get('error', 0))} errored). Their seeds are dropped pairwise from the comparisons "
            "they touch (a baseline trial touches every comparison of its regime"
            + (" at its label fraction)." if a.several_fractions else ").")
        )
    )
    if len(ex):
        s = A.exclusion_summary(excluded, by_fraction=a.several_fractions)
        s["arm"] = s["arm"].map(A.arm_title)
        if a.several_fractions:
            s[A.LABEL_FRACTION] = s[A.LABEL_FRACTION].map(_percent)
        blocks.append(Table(s.rename(columns={"n_trials": "trials", A.LABEL_FRACTION: LABELS_COLUMN})))
    if pairing is not None and len(pairing.dropped):
        blocks.append(Box("note", "seeds dropped from the paired comparisons", pairing.notes()))
    errors = (a.manifest or {}).get("errors") or []
    if errors:
        keys = ("trial_id", "arm", "seed", *(("label_fraction",) if a.several_fractions else ()), "error")
        rows = [{k: str(e.get(k, "")) for k in keys} for e in errors if isinstance(e, dict)]
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
        text = json.dumps(manifest["config"], indent=2, sort_keys=True, default=str)
        blocks.append(Heading(3, "Config"))
        blocks.append(Pre(text, summary=f"The run's config (JSON, {len(text.splitlines())} lines)"))
    if len(blocks) == 1:
        blocks.append(Para(f"{NA}: manifest.json holds none of the expected keys."))
    return blocks
