"""The pretext section's tables: each registered task's pretext metrics over seeds (the paper's Tables 2 and
3 and a table per other registered `PretextTask.table`), and each metric beside its best learning-free
reference, with whether the pretext learned.

results.csv columns read here (all constant within a trial, missing for the baseline and for older runs):
  pretext_headline                 the metric deciding whether a task's pretext learned (text)
  pretext_<metric>                 the model's value on the pretext test pairs
  pretext_ref_<name>_<metric>      a learning-free reference's value (name in `labels.REFERENCE_TITLES`)
  pretext_ref_<metric>             the best reference on that metric; pretext_ref_name: best on the headline
  pretext_learned                  the model beats the best reference on the headline metric (bool)
  pretext_biharmonic_subset_region_mse, pretext_ref_biharmonic_region_mse, pretext_biharmonic_n,
  pretext_beats_classical          an inpainting task vs a classical inpainter on a subsample of test images
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import arm_order
from study.report.labels import arm_title
from study.report.results_table import boolean_column
from study.tasks import references, registry


def pretext_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The pretext tables over seeds, one per `study.tasks.registry.tables()` name (the default tables of the
    angle and image heads are the paper's Tables 2 and 3); a registered task names its table
    (`PretextTask.table`) and the metrics listed in it (`PretextTask.metrics`).

    A trial's pretext metrics repeat on each of its regime rows, and trials of the same arm and seed share
    one pretext model, so values are first reduced to one per arm x seed, then aggregated across seeds. A
    pretext phase that finished counts even when the trial's fine-tune later diverged or failed (its metrics
    describe the pretext model); a diverged pretext has no finite metrics and drops out. Long format,
    columns ``arm, arm_title, task, metric, n, mean, sd`` (n = seeds with a finite value; sd ddof=1, NaN when
    n < 2); e.g. image tasks list ``pretext_region_mse`` (inside the corrupted region) and, for an inpainting
    task, ``pretext_composite_mse/ssim`` (model output pasted into the hole) when the table has them.
    Every registered table is in the result; one is empty when no arm of it has a finite pretext value. Arms
    of tasks not registered here are in none (``unregistered_tasks`` names them). With several label
    fractions the pretext is still one per arm x seed (the fractions share it), so it is counted once.
    """
    per_seed = _per_arm_seed(df)
    return {table: _pretext_table(per_seed, table) for table in registry.tables()}


def unregistered_tasks(df: pd.DataFrame) -> list[str]:
    """Tasks of the table's SSL arms that are not registered here: their pretext metrics are in no table."""
    return sorted(set(df["task"].dropna()) - {"none", *registry.TASKS})


def _per_arm_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per arm x seed (first appearance order): each column's first non-missing value over the rows
    of that arm and seed (its regimes and label fractions: one pretext model per task and seed serves them
    all, so a fraction whose trial failed before recording it does not hide the value another recorded)."""
    if not df.duplicated(["arm", "seed"]).any():
        return df
    return df.groupby(["arm", "seed"], sort=False, dropna=False).first().reset_index()


def _pretext_table(per_seed: pd.DataFrame, table: str) -> pd.DataFrame:
    cols = ["arm", "arm_title", "task", "metric", "n", "mean", "sd"]
    tasks = [name for name, task in registry.TASKS.items() if task.table == table]
    rows = []
    for arm in arm_order(per_seed.loc[per_seed["task"].isin(tasks), "arm"]):
        g = per_seed[per_seed["arm"] == arm]
        task = str(g["task"].iloc[0])
        for m in (f"pretext_{name}" for name in registry.TASKS[task].metrics):
            if m not in g.columns:
                continue
            x = g[m].to_numpy(dtype=float)
            x = x[np.isfinite(x)]
            if x.size == 0:
                continue
            rows.append(
                {
                    "arm": arm,
                    "arm_title": arm_title(arm),
                    "task": task,
                    "metric": m,
                    "n": x.size,
                    "mean": x.mean(),
                    "sd": x.std(ddof=1) if x.size > 1 else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=cols)


# "Did the pretext learn" is judged against these (one list, the verdict's own); the classical inpainter is a
# stronger bar, shown beside.
TRIVIAL_REFERENCES = references.TRIVIAL


# (model metric, reference metric) pairs, headline metrics and which metrics are better when larger: the
# registry's (`PretextTask.reference_pairs`, `.headline`, `.higher_is_better`).
# Model metric name of the classical-inpainter comparison (its own row, on the inpainter's subsample).
BIHARMONIC_METRIC = "biharmonic_subset_region_mse"


PRETEXT_REFERENCE_COLUMNS = [
    "arm",
    "arm_title",
    "task",
    "metric",
    "reference_metric",
    "headline",
    "higher_is_better",
    "n",
    "model_mean",
    "model_sd",
    "reference",
    "ref_mean",
    "ref_sd",
    "ratio_mean",
    "n_better",
    "n_judged",
    "images",
]


def pretext_reference_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each pretext arm's model metrics beside the best trivial reference, over seeds. Long format.

    ``df``: the results table (one row per trial x regime; reduced to one row per arm x seed, counting a
    pretext whose fine-tune later failed, as ``pretext_tables`` does). One row per arm x compared metric
    (the task's ``reference_pairs`` in the registry, its headline metric first, then the biharmonic
    comparison for a task scored against the biharmonic inpainter), only where both model and reference
    values exist; arms of tasks not registered here are left out. Columns: ``metric`` /
    ``reference_metric`` without the ``pretext_`` prefix; ``headline`` (bool); ``n`` seeds with both values;
    ``model_mean, model_sd, ref_mean, ref_sd`` over those seeds (metric units: degrees, squared error on the
    0-255 scale, SSIM, fraction; sd ddof=1, NaN when n < 2); ``reference`` the best reference's name(s) over
    seeds ("identity/meanfill" when it varies); ``ratio_mean`` the mean over seeds of model / reference;
    ``n_better`` of ``n_judged`` seeds on which the model beats the reference: for the headline metric the
    runner's ``pretext_learned`` (which leaves out diverged pretexts) when present, for the biharmonic row
    ``pretext_beats_classical``, else the values compared; ``images`` the biharmonic subsample size (median
    over seeds), else NaN. Empty when the table has no reference columns (runs before they were recorded).
    """
    per_seed = _per_arm_seed(df)
    rows = []
    for arm in arm_order(per_seed.loc[per_seed["task"].isin(list(registry.TASKS)), "arm"]):
        g = per_seed[per_seed["arm"] == arm]
        task = str(g["task"].iloc[0])
        spec = registry.TASKS[task]
        head = _pretext_headline(g, spec)
        pairs = list(spec.reference_pairs)
        if head not in [m for m, _ in pairs]:  # a headline the runner chose that this table does not list
            pairs.append((head, head))
        for model_metric, ref_metric in sorted(pairs, key=lambda pr: pr[0] != head):
            higher = spec.metric_higher_is_better(ref_metric)
            ref, names = _best_reference(g, ref_metric, higher, spec.references or ())
            is_head = model_metric == head
            if is_head and "pretext_ref_name" in g:
                names = [n if isinstance(n, str) and n else m for n, m in zip(g["pretext_ref_name"], names)]
            row = _reference_row(
                float_column(g, f"pretext_{model_metric}"),
                ref,
                names,
                higher,
                g["pretext_learned"] if is_head and "pretext_learned" in g else None,
            )
            if row:
                rows.append(_row_ident(arm, task, model_metric, ref_metric, is_head, higher) | row)
        if "biharmonic" in spec.references:
            row = _reference_row(
                float_column(g, f"pretext_{BIHARMONIC_METRIC}"),
                float_column(g, "pretext_ref_biharmonic_region_mse"),
                ["biharmonic"] * len(g),
                False,
                g["pretext_beats_classical"] if "pretext_beats_classical" in g else None,
            )
            if row:
                images = float_column(g, "pretext_biharmonic_n")
                row["images"] = (
                    float(np.median(images[np.isfinite(images)])) if np.isfinite(images).any() else np.nan
                )
                rows.append(_row_ident(arm, task, BIHARMONIC_METRIC, "region_mse", False, False) | row)
    return pd.DataFrame(rows, columns=PRETEXT_REFERENCE_COLUMNS)


def _row_ident(arm: str, task: str, metric: str, ref_metric: str, head: bool, higher: bool) -> dict[str, Any]:
    return {
        "arm": arm,
        "arm_title": arm_title(arm),
        "task": task,
        "metric": metric,
        "reference_metric": ref_metric,
        "headline": head,
        "higher_is_better": higher,
    }


def _pretext_headline(g: pd.DataFrame, task: registry.PretextTask) -> str:
    """The headline the runner recorded (`pretext_headline`), else the registry's (tables of older runs)."""
    values = (
        g["pretext_headline"].dropna().astype(str) if "pretext_headline" in g else pd.Series([], dtype=str)
    )
    return str(values.mode().iloc[0]) if len(values) else task.headline


def float_column(g: pd.DataFrame, col: str) -> np.ndarray:
    """``g[col]`` as float (n,); NaN where absent or not a number."""
    if col not in g:
        return np.full(len(g), np.nan)
    return pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float)


def _best_reference(
    g: pd.DataFrame, metric: str, higher_better: bool, task_references: Sequence[str] = ()
) -> tuple[np.ndarray, list[str | None]]:
    """Per seed, the best trivial reference on ``metric``: ``(values (n,), names (n,))``.

    ``pretext_ref_<metric>`` when recorded, else the best of the ``pretext_ref_<name>_<metric>`` columns of
    ``TRIVIAL_REFERENCES`` and the task's own learning-free ``task_references`` (e.g. the contrastive
    tasks' "initial" encoder); a seed's name is the reference matching that value (None when none does)."""
    own = [n for n in task_references if n not in references.CLASSICAL]  # the inpainter has its own row
    candidates = dict.fromkeys((*TRIVIAL_REFERENCES, *own))
    per_ref = {name: float_column(g, f"pretext_ref_{name}_{metric}") for name in candidates}
    per_ref = {k: v for k, v in per_ref.items() if np.isfinite(v).any()}
    if f"pretext_ref_{metric}" in g:
        best = float_column(g, f"pretext_ref_{metric}")
    elif per_ref:
        stack = np.vstack(list(per_ref.values()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN seeds stay NaN
            best = np.nanmax(stack, axis=0) if higher_better else np.nanmin(stack, axis=0)
    else:
        best = np.full(len(g), np.nan)
    names: list[str | None] = []
    for i, b in enumerate(best):
        match = [k for k, v in per_ref.items() if np.isfinite(b) and np.isclose(v[i], b, rtol=1e-9, atol=0)]
        names.append(match[0] if match else None)
    return best, names


def _reference_row(
    model: np.ndarray,
    ref: np.ndarray,
    names: Sequence[str | None],
    higher_better: bool,
    verdict: pd.Series | None,
) -> dict[str, Any]:
    """Model vs reference over the seeds with both values (all arrays (n_seeds,)); {} when there are none.

    ``verdict``: the runner's per-seed "model beats the reference" (bool-like), counted instead of the
    values when given."""
    both = np.isfinite(model) & np.isfinite(ref)
    if not both.any():
        return {}
    m, r = model[both], ref[both]
    if verdict is not None:
        judged = boolean_column(verdict).dropna()
        n_better, n_judged = int(judged.sum()), int(judged.size)
    else:
        n_better, n_judged = int(np.sum(m > r if higher_better else m < r)), int(m.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = m / r
    ratio = ratio[np.isfinite(ratio)]
    used = [n for n, keep in zip(names, both) if keep and n]
    return {
        "n": int(m.size),
        "model_mean": m.mean(),
        "model_sd": m.std(ddof=1) if m.size > 1 else np.nan,
        "reference": "/".join(dict.fromkeys(used)) or "best reference",
        "ref_mean": r.mean(),
        "ref_sd": r.std(ddof=1) if r.size > 1 else np.nan,
        "ratio_mean": ratio.mean() if ratio.size else np.nan,
        "n_better": n_better,
        "n_judged": n_judged,
        "images": np.nan,
    }


def pretext_learned(reference_table: pd.DataFrame) -> pd.DataFrame:
    """Whether each arm's pretext learned: its headline rows of ``pretext_reference_table``.

    Columns ``arm, arm_title, task, metric, reference, n_learned, n_judged, learned_seeds`` ("k/n") and
    ``majority_failed`` (the pretext did not beat its reference on more than half of the judged seeds).
    """
    cols = ["arm", "arm_title", "task", "metric", "reference", "n_learned", "n_judged"]
    t = reference_table[reference_table["headline"].astype(bool) & (reference_table["n_judged"] > 0)]
    out = t.rename(columns={"n_better": "n_learned"})[cols].reset_index(drop=True)
    out["n_learned"] = out["n_learned"].astype(int)
    out["n_judged"] = out["n_judged"].astype(int)
    out["learned_seeds"] = [f"{k}/{n}" for k, n in zip(out["n_learned"], out["n_judged"])]
    out["majority_failed"] = (out["n_judged"] - out["n_learned"]) > out["n_judged"] / 2
    return out
