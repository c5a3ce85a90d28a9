"""The pretext sections: each registered task's pretext table beside its learning-free references, the
pretext examples, and the linear probe of the frozen encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from study import analysis as A
from study.report import formatting as F
from study.report import labels as L
from study.report import plots
from study.report import pretext_tables as PT
from study.report.document import Block, Box, Heading, Image, Para, Table
from study.report.run_analysis import RunAnalysis
from study.tasks import registry

# Rows of the model-vs-reference tables: analysis.pretext_reference_table's metric names.
REFERENCE_METRIC_LABELS = {
    "aad_circ_deg": "circular AAD (\u00b0)",
    "mse": "MSE (angle/360)",
    "accuracy": "4-way accuracy",
    "mse_mean": "MSE, whole image",
    "ssim_mean": "SSIM, whole image",
    "composite_mse": "MSE, composite (model fills the hole only)",
    "composite_ssim": "SSIM, composite",
    PT.BIHARMONIC_METRIC: "MSE inside the hole, biharmonic subsample",
}


# The paper's pretext tables, the default tables of the angle and image heads (`PretextTask.table`): (number,
# caption, what an empty one says); the heading names the paper's tasks in it (`_paper_heading`). Shown in
# every report; another registered table is shown when the run has an arm with finite metrics in it.
PAPER_PRETEXT_TABLES = {
    registry.DEFAULT_TABLE["angle"]: (
        "Table 2",
        "Mean \u00b1 SD across seeds of each test-set metric. Scaled values are angle/360; circular "
        "differences take the shorter way round the circle (the paper's are not circular).",
        "no rotation arm",
    ),
    registry.DEFAULT_TABLE["image"]: (
        "Table 3",
        "Mean \u00b1 SD across seeds; each seed's value is the mean (or SD) over test images of MSE "
        "(0\u2013255 scale) and SSIM on de-processed images.",
        "no image pretext arm",
    ),
}


def pretext_blocks(a: RunAnalysis, fig_dir: Path) -> list[Block]:
    refs = a.pretext_refs
    blocks: list[Block] = [Heading(2, "Pretext tasks (paper Tables 2 and 3)")]
    for name, table in a.pretext_tables.items():
        tasks = [t.name for t in registry.TASKS.values() if t.table == name]
        if name in PAPER_PRETEXT_TABLES:
            number, caption, empty = PAPER_PRETEXT_TABLES[name]
            heading = _paper_heading(number, name)
            kind = name
        elif table.empty:
            continue
        else:
            kind = " and ".join(L.task_title(t) for t in tasks)
            heading, caption = f"Pretext: {kind}", "Mean \u00b1 SD across seeds of each test-set metric."
        blocks.append(Heading(3, heading))
        if table.empty:
            blocks.append(Para(f"{F.NA}: {empty} with finite pretext metrics in this run."))
            continue
        blocks.append(Table(_pretext_display(table), caption))
        blocks += _reference_blocks(refs[refs["task"].isin(tasks)], kind)
    unregistered = PT.unregistered_tasks(a.df)
    if unregistered:
        blocks.append(
            Para(
                f"Pretext metrics of {', '.join(unregistered)} are not tabulated: no such task is registered "
                "where this report was made (import the module that registers it, then run `study report`)."
            )
        )
    return blocks + _example_blocks(a, fig_dir)


def _paper_heading(number: str, table: str) -> str:
    """``"<number>: <titles>"``: the titles (lower case) of the paper's tasks in ``table``, joined by "and"."""
    titles = [t.title.lower() for t in registry.TASKS.values() if t.table == table and t.paper_table1]
    return f"{number}: {' and '.join(titles)}"


def _pretext_display(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for arm in A.arm_order(table["arm"]):
        g = table[table["arm"] == arm]
        row = {"Self-supervision method": L.arm_title(arm), "n seeds": int(g["n"].max())}
        for r in g.itertuples(index=False):
            row[_metric_label(r.task, r.metric)] = (
                f"{F.num(r.mean, 4)} \u00b1 {F.num(r.sd, 3)}" if np.isfinite(r.sd) else F.num(r.mean, 4)
            )
        rows.append(row)
    return pd.DataFrame(rows).fillna(F.NA)


def _metric_label(task: str, column: str) -> str:
    """The report's name of a `pretext_<metric>` column: the paper tasks' labels here, a registered task's
    own (`PretextTask.metric_labels`), else the column name."""
    if column in L.PRETEXT_LABELS:
        return L.PRETEXT_LABELS[column]
    return _own_labels(task).get(column.removeprefix("pretext_"), column)


def _own_labels(task: str) -> dict[str, str]:
    """A registered task's names for its metrics (`PretextTask.metric_labels`); {} for other tasks."""
    spec = registry.TASKS.get(task)
    return dict(spec.metric_labels) if spec is not None else {}


def _reference_display(refs: pd.DataFrame) -> pd.DataFrame:
    """``analysis.pretext_reference_table`` rows as text: model vs best learning-free reference per metric."""
    rows = []
    for r in refs.itertuples(index=False):
        label = (
            _own_labels(r.task).get("region_mse", r.metric)
            if r.metric == "region_mse"
            else REFERENCE_METRIC_LABELS.get(r.metric) or _metric_label(r.task, f"pretext_{r.metric}")
        )
        if r.metric == PT.BIHARMONIC_METRIC and np.isfinite(r.images):
            label += f" ({r.images:.0f} images)"
        judged = f"{r.n_better} of {r.n_judged} seeds"
        rows.append(
            {
                "Self-supervision method": r.arm_title,
                "Metric": label + (" (headline)" if r.headline else ""),
                "n seeds": r.n,
                "Model": F.spread(r.model_mean, r.model_sd),
                "Best reference": f"{_reference_names(r.reference)}: {F.spread(r.ref_mean, r.ref_sd)}",
                "Model / reference": F.num(r.ratio_mean, 3),
                "Model better": ("learned on " if r.headline else "better on ") + judged,
            }
        )
    return pd.DataFrame(rows)


def _reference_names(names: str) -> str:
    """``"identity/meanfill"`` -> ``"identity/mean fill"``."""
    return "/".join(L.REFERENCE_SHORT.get(n, n) for n in names.split("/"))


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
        "model beats the reference on the task's headline metric. A check of the pretext phase (secondary): "
        "counts of seeds, not a test, so it is outside every Holm family."
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
                f"{F.NA}: no examples/<task>_seed<seed>.npz files with examples in the run dir (image tasks, "
                "and rotation tasks that recorded angles)."
            )
        )
    for task, ex in sorted(a.examples.items(), key=lambda kv: A.task_rank(kv[0])):
        title = f"{L.arm_title(task)} (seed {ex.seed})"
        if ex.kind == "angle":
            x = ex.arrays
            fig = plots.angle_example_grid(title, x["inputs"], x["angle_true_deg"], x["angle_pred_deg"])
            caption = f"{L.arm_title(task)}: rotated inputs with true and predicted angle"
        elif ex.kind == "views":
            x = ex.arrays
            fig = plots.example_grid(
                title, x["images"], x["view1"], x["view2"], labels=("image", "view 1", "view 2")
            )
            caption = f"{L.arm_title(task)}: test image and the two augmented views matched to each other"
        else:
            x = ex.arrays
            fig = plots.example_grid(title, x["inputs"], x["targets"], x["outputs"])
            caption = f"{L.arm_title(task)}: input, target, output"
        blocks.append(Image(plots.save_figure(fig, fig_dir / f"examples_{task}.png"), caption))
    if a.example_notes:
        blocks.append(Box("note", "example files that could not be shown", a.example_notes))
    return blocks


def probe_blocks(a: RunAnalysis) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Linear probe (frozen encoder)")]
    if a.probe.empty:
        why = (
            "results.csv has no probe_auc column (the run predates the linear probe)"
            if "probe_auc" not in a.df
            else "no trial has a finite probe_auc"
        )
        return blocks + [Para(f"{F.NA}: {why}.")]
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
                "Secondary analysis (exploratory), its own Holm family: paired by seed (arm \u2212 baseline, "
                "percentage points); two-sided Wilcoxon signed-rank "
                f"test, Holm-corrected across {family}, \u03b1 = {a.alpha:g}. "
                "Full precision in probe.csv.",
            )
        )
    elif a.pairing_error:
        blocks.append(
            Para("No paired probe comparison: the table is not paired by seed (see the comparisons above).")
        )
    return blocks


def _probe_display(probe: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        ({F.LABELS_COLUMN: [F.percent(f) for f in probe[A.LABEL_FRACTION]]} if with_fraction else {})
        | {
            "Arm": probe["arm_title"],
            "n seeds": probe["n"],
            "probe AUC (%)": [F.mean_sd(m, s, "test_auc") for m, s in zip(probe["mean"], probe["sd"])],
            "C (median)": [F.num(c, 3) for c in probe["c_median"]],
        }
    )


def _probe_comparison_display(comp: pd.DataFrame, with_fraction: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        ({F.LABELS_COLUMN: [F.percent(f) for f in comp[A.LABEL_FRACTION]]} if with_fraction else {})
        | {
            "Arm": comp["arm_title"],
            "n pairs": comp["n"],
            "Baseline (%)": [F.value(v, "test_auc") for v in comp["mean_baseline"]],
            "Arm (%)": [F.value(v, "test_auc") for v in comp["mean_arm"]],
            "\u0394 (pp)": [F.diff(100 * d, "test_auc", signed=True) for d in comp["mean_diff"]],
            "p Wilcoxon": [F.p_value(p) for p in comp["p_wilcoxon"]],
            "Holm p": [F.p_value(p) for p in comp["p_holm"]],
            "P(improve)": [F.num(v, 2) for v in comp["prob_improvement"]],
        }
    )
