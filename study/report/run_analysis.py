"""Everything a report states about one run, computed once: ``analyse_run`` reads ``results.csv``
(required) and, when present, ``history.csv``, ``manifest.json`` and ``examples/*.npz``, and fills one
``RunAnalysis``; the section modules only format it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from study import analysis as A
from study import verdicts as V
from study.io.files import UnsafeFileError, read_json, read_regular
from study.report import cost as C
from study.report import sequential as SQ
from study.report import simulate as S
from study.report import tables as T
from study.report.labels import metric_label
from study.report.pretext_tables import pretext_learned, pretext_reference_table, pretext_tables
from study.report.results_table import load_history, load_run, split_valid
from study.spec.config import ConfigError
from study.spec.presets import AnalysisPlan
from study.tasks import registry


@dataclass
class RunAnalysis:
    """Everything the report states about one run, computed once by ``analyse_run``; the section functions
    only format it. Frames are ``analysis`` outputs as ``tables`` titles them (their docstrings give the columns)."""

    run_dir: Path
    metric: str  # results-table column of the primary metric, e.g. "test_auc"
    alpha: float
    family: Literal["primary", "study", "regime"]
    df: pd.DataFrame  # load_run: every trial x regime, excluded trials included
    excluded: pd.DataFrame  # split_valid's excluded rows, with reasons
    summary: pd.DataFrame  # tables.summary_table
    pairing: A.Pairing | None  # None when the table is not paired by seed (pairing_error says why)
    pairing_error: str
    comparisons: pd.DataFrame  # tables.comparison_table + simulate.power_planning + pretext_learned_seeds
    null_rates: dict[str, float]  # simulate.null_rejection_rates for this design ({} without comparisons)
    friedmans: list[dict[str, Any]]  # tables.friedman_result, one per (label fraction, regime) cell
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
    plan: AnalysisPlan | None = None  # the primary analysis: declared, or given to `study report` (plan_note)
    plan_note: str = ""  # "" when the run's declaration is used as is; else what was changed and why
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)  # verdicts.decide: the primary comparisons
    # sequential.looks_table when the study has looks (declared, or extended); verdicts then are the looks'
    looks: pd.DataFrame | None = None
    looks_planned: bool = False

    @property
    def label(self) -> str:
        return metric_label(self.metric)

    @property
    def fractions(self) -> list[float]:
        return A.label_fractions(self.df)

    @property
    def several_fractions(self) -> bool:
        """A label-efficiency study: tables gain a "Labels" column, sentences name the fraction."""
        return len(self.fractions) > 1


def analyse_run(
    run_dir: str | Path,
    metric: str | None = None,
    *,
    alpha: float = 0.05,
    family: Literal["primary", "study", "regime", "table"] = "primary",
    strict: bool = False,
    primary: tuple[str, float | None] | None = None,
    margin: float | None = None,
) -> RunAnalysis:
    """Read a run dir and compute every table of its report (writes nothing). See ``write.write_report``;
    ``primary`` (regime, label fraction or None) and ``margin`` override the run's declared primary analysis."""
    run_dir = Path(run_dir)
    df = load_run(run_dir)
    manifest, manifest_why = _read_manifest(run_dir)
    metric = A.metric_column(metric or declared_plan(df, manifest)[0].metric, df.columns)
    history, history_why = _read_history(run_dir)
    examples, example_notes = _read_examples(run_dir)
    _, excluded = split_valid(df)
    pairing, pairing_error = _pairing(df, metric, strict, SQ.not_run_by_design(manifest))
    plan, plan_note = _primary_plan(df, metric, alpha, manifest, primary, margin)
    comp, null_rates, family = _comparisons(df, metric, alpha, A.resolve_family(family), pairing, plan)
    # The primary family's rows are the verdicts' comparisons already; other families recompute them.
    reuse = comp[comp["holm_family"] == "primary"].reset_index(drop=True) if family == "primary" else None
    planned = {"plan": plan, "plan_note": plan_note, "verdicts": _verdicts(df, metric, pairing, plan, reuse)}
    planned.update(_looks(df, pairing, plan, manifest, planned["verdicts"]))
    refs = pretext_reference_table(df)
    learned = pretext_learned(refs)
    comp = comp.assign(
        pretext_learned_seeds=comp["arm"].map(dict(zip(learned["arm"], learned["learned_seeds"])))
    )
    curves = _curves(history, df, excluded) if history is not None else None
    if history is not None and curves is None:
        history_why = "history.csv has no finite fine-tune validation loss/AUC values"
    summary = T.summary_table(df)
    return RunAnalysis(
        run_dir=run_dir,
        metric=metric,
        alpha=alpha,
        family=family,
        df=df,
        excluded=excluded,
        summary=summary,
        pairing=pairing,
        pairing_error=pairing_error,
        comparisons=comp,
        null_rates=null_rates,
        friedmans=[
            T.friedman_result(df, metric, r, alpha, label_fraction=f, pairing=pairing)
            for f, r in pairing.cells
        ]
        if pairing is not None
        else [],
        pretext_tables=pretext_tables(df),
        pretext_refs=refs,
        learned=learned,
        probe=T.probe_table(df),
        probe_comparisons=T.probe_comparisons(df) if pairing is not None else pd.DataFrame(),
        curves=curves,
        history_why=history_why,
        examples=examples,
        example_notes=example_notes,
        manifest=manifest,
        manifest_why=manifest_why,
        efficiency=T.label_efficiency(summary, metric, 1 - alpha),
        phase_costs=C.phase_costs(df),
        cost_benefit=C.cost_benefit(df, comp),
        **planned,
    )


def declared_plan(df: pd.DataFrame, manifest: dict[str, Any] | None) -> tuple[AnalysisPlan, str]:
    """The run's declared primary analysis (manifest.json's study), or, for a run made before studies
    declared one, the defaults the resolution step would have filled in, with a note saying so."""
    saved = ((manifest or {}).get("config") or {}).get("analysis")
    if saved:
        return AnalysisPlan.from_dict(saved), ""
    regimes = [r for r in df["regime"].dropna().unique()]
    longest = max(regimes, key=lambda r: 0 if r == "none" else int(str(r).removeprefix("patience")))
    fractions = A.label_fractions(df)
    fraction = min(fractions)
    note = (
        "this run declared no primary analysis (it predates the declaration); the defaults are used: the "
        f"longest-patience regime ({longest})"
        + (
            f" at the smallest label fraction ({100 * fraction:g} % of the labels)"
            if len(fractions) > 1
            else ""
        )
    )
    return AnalysisPlan(primary_regime=longest, primary_fraction=fraction), note


def _primary_plan(
    df: pd.DataFrame,
    metric: str,
    alpha: float,
    manifest: dict[str, Any] | None,
    primary: tuple[str, float | None] | None,
    margin: float | None,
) -> tuple[AnalysisPlan, str]:
    """``RunAnalysis``'s plan and plan_note: the declared primary analysis, with what `study report`
    overrides."""
    plan, note = declared_plan(df, manifest)
    declared = plan
    changes: dict[str, Any] = {}
    if primary is not None:
        regimes, fractions = sorted(set(df["regime"].dropna())), A.label_fractions(df)
        if primary[0] not in regimes or (primary[1] is not None and primary[1] not in fractions):
            raise ConfigError(  # a flag the user gave, not a table the report cannot read
                f"--primary {primary[0]}"
                + (f"@{primary[1]:g}" if primary[1] is not None else "")
                + f": not a cell of this run; regimes: {', '.join(regimes)}; label fractions: "
                + ", ".join(f"{f:g}" for f in fractions)
            )
        changes.update(primary_regime=primary[0], primary_fraction=primary[1] or plan.primary_fraction)
    if margin is not None:
        changes["equivalence_margin"] = margin
    if metric != plan.metric:
        changes["metric"] = metric
    if alpha != plan.alpha:
        changes["alpha"] = alpha
    if changes:
        plan = AnalysisPlan(**{**plan.__dict__, **changes})
        note = (note + "; " if note else "") + (
            f"`study report` overrides the declared primary analysis ({_plan_text(declared)}) with "
            f"{_plan_text(plan)}: the verdicts below are not the pre-declared ones"
        )
    return plan, note


def _verdicts(
    df: pd.DataFrame,
    metric: str,
    pairing: A.Pairing | None,
    plan: AnalysisPlan,
    primary_rows: pd.DataFrame | None,
) -> pd.DataFrame:
    """``verdicts.decide`` on the primary family: ``primary_rows`` when the report's comparisons are that
    family (titled and planned), else computed here; empty without a pairing, the cell or a direction."""
    if pairing is None or plan.primary_regime not in set(df["regime"]) or not A.metric_direction(metric):
        return pd.DataFrame()
    comp = primary_rows
    if comp is None:
        cell = (float(plan.primary_fraction or 1.0), plan.primary_regime)
        comp = A.compare_to_baseline(df, metric, plan.alpha, "primary", pairing=pairing, primary=cell)
        comp = comp[comp["holm_family"] == "primary"].reset_index(drop=True)
        if not comp.empty:
            comp = T.comparison_table(comp, plan.alpha, pairing.several_fractions)
            comp = pd.concat([comp, S.power_planning(comp, plan.alpha)], axis=1)
    return pd.DataFrame() if comp.empty else V.decide(df, comp, plan, pairing)


def _looks(
    df: pd.DataFrame, pairing: A.Pairing | None, plan: AnalysisPlan, manifest: dict[str, Any] | None, verdicts
) -> dict[str, Any]:
    """The verdicts over the run's looks (`report.sequential`) in place of the one-look verdicts, and the looks
    table; nothing for a study analysed once."""
    if pairing is None or verdicts.empty:
        return {}
    cell = (float(plan.primary_fraction or A.DEFAULT_LABEL_FRACTION), plan.primary_regime)
    sizes = SQ.look_sizes(manifest, plan, len(pairing.seeds.get(cell, ())))
    looks = SQ.run_looks(df, plan, pairing, sizes) if sizes else None
    if looks is None:
        return {}
    return {
        "verdicts": SQ.apply_looks(verdicts, looks),
        "looks": SQ.looks_table(looks),
        "looks_planned": looks.sequential.planned,
    }


def _plan_text(plan: AnalysisPlan) -> str:
    return (
        f"{plan.metric}, regime {plan.primary_regime}, label fraction {plan.primary_fraction:g}, "
        f"margin \u00b1{plan.equivalence_margin:g}, \u03b1 = {plan.alpha:g}"
    )


def _pairing(
    df: pd.DataFrame, metric: str, strict: bool, not_run: dict[str, set[int]]
) -> tuple[A.Pairing | None, str]:
    """``(check_pairing, "")``, or ``(None, why)`` for a table not paired by seed (raised when ``strict``);
    ``not_run``: seeds arms closed at an earlier look did not run."""
    try:
        return A.check_pairing(df, metric, not_run), ""
    except A.PairingError as e:
        if strict:
            raise
        return None, str(e)


def _comparisons(
    df: pd.DataFrame, metric: str, alpha: float, family: str, pairing: A.Pairing | None, plan: AnalysisPlan
) -> tuple[pd.DataFrame, dict[str, float], str]:
    """The titled comparisons with their power planning, the simulated null rates of this design (``{}``
    without comparisons) and the Holm family used; no rows without a pairing. Family ``"primary"``: Holm within the plan's
    primary cell, the other cells one secondary family (a run lacking that cell falls back to ``"study"``)."""
    if pairing is None:
        return T.comparison_table(pd.DataFrame(columns=A.COMPARISON_COLUMNS), alpha, False), {}, family
    cell = (float(plan.primary_fraction or 1.0), plan.primary_regime)
    if family == "primary" and not any(np.isclose(f, cell[0]) and r == cell[1] for f, r in pairing.cells):
        family = "study"
    primary = cell if family == "primary" else None
    comp = A.compare_to_baseline(df, metric, alpha=alpha, family=family, pairing=pairing, primary=primary)
    comp = T.comparison_table(comp, alpha, pairing.several_fractions)
    if not len(comp):
        return comp, {}, family
    comp = pd.concat([comp, S.power_planning(comp, alpha)], axis=1)
    # Each (label fraction, regime) cell is one independent family of the simulation.
    n, k, cells = int(comp["n"].median()), comp["arm"].nunique(), n_cells(comp)
    if n < 2:  # no finite pairs to compare (e.g. every value of the metric is NaN): nothing to simulate
        return comp, {}, family
    null_rates = dict(S.null_rejection_rates(n, k, cells, alpha))
    # The secondary family: Holm over every arm of the cells other than the primary one.
    null_rates["studywise_secondary"] = (
        S.null_rejection_rates(n, k, cells - 1, alpha)["studywise_study"] if cells > 1 else np.nan
    )
    return comp, null_rates, family


def _curves(history: pd.DataFrame, df: pd.DataFrame, excluded: pd.DataFrame) -> pd.DataFrame | None:
    """``tables.learning_curves`` of the trials not excluded; None when no value is finite."""
    if A.LABEL_FRACTION not in history:  # a history.csv older than its results.csv's column
        fractions = dict(zip(df["trial_id"], df[A.LABEL_FRACTION]))
        history = history.assign(**{A.LABEL_FRACTION: history["trial_id"].map(fractions).fillna(1.0)})
    curves = T.learning_curves(history, exclude_trials=excluded["trial_id"].unique())
    return None if curves.empty else curves


def n_cells(comp: pd.DataFrame) -> int:
    """(label fraction, regime) cells among comparison rows."""
    return len(comp.drop_duplicates([A.LABEL_FRACTION, "regime"]))


# --------------------------------------------------------------------------------------------- run inputs


def _read_manifest(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """manifest.json as data: a bounded regular file (never a FIFO or a link), JSON bounded in depth."""
    path = run_dir / "manifest.json"
    if not path.is_file() and not path.is_symlink():
        return None, "manifest.json not found in the run dir (written by the runner when a study finishes)"
    try:
        m = read_json(path, limit=MAX_MANIFEST_BYTES)
    except (OSError, UnsafeFileError) as e:
        return None, f"manifest.json could not be read ({e})"
    if not isinstance(m, dict):
        return None, "manifest.json is not a JSON object"
    return m, ""


def _read_history(run_dir: Path) -> tuple[pd.DataFrame | None, str]:
    if not (run_dir / "history.csv").is_file():
        return None, "history.csv not found in the run dir"
    try:
        h = load_history(run_dir)
    except A.AnalysisError as e:
        return None, str(e)
    if h.empty:
        return None, "history.csv has no rows"
    return h, ""


IMAGE_EXAMPLE_KEYS = ("inputs", "targets", "outputs")
# Bounds on the run files a report reads (they come with the run): the manifest, and each example file.
MAX_MANIFEST_BYTES = 64 << 20
MAX_EXAMPLE_BYTES = 256 << 20


ANGLE_EXAMPLE_KEYS = ("inputs", "angle_true_deg", "angle_pred_deg")


VIEW_EXAMPLE_KEYS = (
    "images",
    "view1",
    "view2",
)  # tasks with their own two-view step (study.train.contrastive)


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

    The runner copies every pretext's ``examples.npz``: an empty one (a diverged pretext) or an angle-head file
    without recorded angles has nothing to show and is passed over without a note, since neither is a fault.
    """
    found: dict[str, Example] = {}
    notes = []
    folder = run_dir / "examples"
    if folder.is_symlink():  # a run's examples are its own files: never read from elsewhere
        return found, ["examples/: is a symbolic link, not the run's own folder; not read"]
    if not folder.is_dir():
        return found, notes
    for path in sorted(folder.glob("*_seed*.npz")):
        task, _, seed_text = path.stem.rpartition("_seed")
        try:
            seed = int(seed_text)
            arrays = _load_npz(path)
        except (ValueError, OSError, zipfile.BadZipFile) as e:  # UnsafeFileError is a ValueError
            notes.append(f"{path.name}: not a valid example file ({e})")
            continue
        example, problem = _example(task, seed, arrays)
        if problem:
            notes.append(f"{path.name}: {problem}")
        elif example is not None and (task not in found or seed < found[task].seed):
            found[task] = example
    return found, notes


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """An example file's arrays: a bounded regular file, its arrays no larger unpacked than
    ``MAX_EXAMPLE_BYTES`` (a small zip may unpack to gigabytes), never unpickled."""
    data = read_regular(path, limit=MAX_EXAMPLE_BYTES)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if sum(i.file_size for i in z.zip.infolist()) > MAX_EXAMPLE_BYTES:
            raise ValueError(f"its arrays unpack to more than {MAX_EXAMPLE_BYTES:,} bytes")
        return {k: np.asarray(z[k]) for k in z.files}


def _example(task: str, seed: int, arrays: dict[str, np.ndarray]) -> tuple[Example | None, str]:
    """``(example or None, problem or "")`` for one file's arrays."""
    if not arrays:
        return None, ""
    # The pretext phase records angle examples for every head but `image` (unregistered tasks: image).
    registered = registry.TASKS.get(task)
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
