"""Synthetic results tables and run dirs whose truth is known, for the analysis and report tests.

Model of one metric value: ``base + regime_shift[regime] + fraction_shift[fraction] + seed_effect[seed] +
effect[arm] + noise``, where the seed effect is shared by all arms (and label fractions) of a seed (what
pairing cancels) and the noise is independent per cell.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import analysis as A
from study.analysis import CLASSIFICATION_METRICS
from study.report import results_table as R
from study.report import tables as T
from study.tasks.registry import get_task

ROTATION_METRICS = tuple(f"pretext_{m}" for m in get_task("rotation").metrics)
ROTATION4_METRICS = tuple(f"pretext_{m}" for m in get_task("rotation4").metrics)
# The whole-image metrics every image task reports (Table 3).
IMAGE_METRICS = ("pretext_mse_mean", "pretext_mse_sd", "pretext_ssim_mean", "pretext_ssim_sd")

ARMS_PAPER = ("baseline", "rotation", "missing_patch", "corruption")
REGIMES = {"none": 0, "patience3": 3, "patience10": 10}


def _task(arm: str) -> str:
    return "none" if arm == "baseline" else arm.split("(", 1)[0]


def make_results(
    n_seeds: int = 20,
    effects: Mapping[str, float] | None = None,
    regimes: Mapping[str, int] | None = None,
    noise_sd: float = 0.03,
    seed_sd: float = 0.05,
    base: float = 0.80,
    rng_seed: int = 0,
    status: Mapping[tuple[str, int], str] | None = None,
    pretext_values: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None,
    finetune_epochs: int = 30,
    references: bool = False,
    not_learned: Mapping[str, Collection[int]] | None = None,
    probe: Mapping[str, float] | None = None,
    label_fractions: Sequence[float] | None = None,
    fraction_effects: Mapping[float, Mapping[str, float]] | None = None,
) -> pd.DataFrame:
    """A results.csv-shaped frame: one row per arm x seed x regime (each trial yields all regimes).

    ``effects``: arm -> true shift of every classification metric vs baseline (fractions); default the
    paper's four arms, no effect. ``status``: (arm, seed) -> "diverged"/"error" for the whole trial.
    ``pretext_values``: arm -> seed -> {metric: value} overriding the random pretext metrics.
    ``references``: add the learning-free reference columns (``pretext_ref_*``, ``pretext_learned``, ...; see
    ``_references``); the pretext of arm a beats its reference on every seed except ``not_learned[a]``.
    ``probe``: arm -> true shift of the linear-probe AUC vs the baseline's (arms not listed: no shift); adds
    ``probe_auc`` (one value per trial, repeated on its regime rows) and ``probe_c``.
    ``label_fractions``: a label-efficiency study, one trial per arm x seed x fraction (trial id
    ``<arm>_s<seed>_f<fraction>``) with a ``label_fraction`` column; the baseline level drops by 10 pp per
    decade of labels removed, the pretext (and its references) is one per arm x seed, shared by the fractions
    as the runner shares it. ``fraction_effects``: fraction -> arm -> shift replacing ``effects`` at that
    fraction. Without ``label_fractions`` the table has no ``label_fraction`` column (a run written before the
    column existed) and the random stream is the one of a single-fraction table.
    """
    effects = dict(effects) if effects is not None else {a: 0.0 for a in ARMS_PAPER if a != "baseline"}
    effects = {"baseline": 0.0, **effects}
    regimes = dict(regimes) if regimes is not None else dict(REGIMES)
    status = dict(status or {})
    rng = np.random.default_rng(rng_seed)
    seed_effect = rng.normal(0, seed_sd, n_seeds)
    rows: list[dict[str, Any]] = []
    for arm, effect in effects.items():
        task = _task(arm)
        for s in range(n_seeds):
            st = status.get((arm, s), "ok")
            pre = _pretext(task, rng)
            if references and task != "none":
                pre.update(_references(task, s not in (not_learned or {}).get(arm, ()), rng))
            if probe is not None:
                auc = 0.65 + seed_effect[s] + probe.get(arm, 0.0) + rng.normal(0, noise_sd)
                pre.update({"probe_auc": float(np.clip(auc, 0, 1)), "probe_c": 0.1 * (1 + s % 3)})
            if pretext_values and arm in pretext_values and s in pretext_values[arm]:
                pre.update(pretext_values[arm][s])
            for f in label_fractions if label_fractions is not None else [None]:
                level = base + (0.1 * np.log10(f) if f is not None else 0.0)
                eff = (fraction_effects or {}).get(f, {}).get(arm, effect) if f is not None else effect
                if probe is not None and f is not None and f != label_fractions[0]:
                    # The probe is fitted on the fraction's labelled images: one per trial.
                    auc = 0.65 + seed_effect[s] + probe.get(arm, 0.0) + rng.normal(0, noise_sd)
                    pre.update({"probe_auc": float(np.clip(auc, 0, 1))})
                extra = {"label_fraction": f} if f is not None else {}
                trial_id = f"{arm}_s{s}" + (f"_f{f:g}" if f is not None else "")
                rows += _trial_rows(
                    rng,
                    regimes,
                    st,
                    level,
                    seed_effect[s],
                    eff,
                    noise_sd,
                    finetune_epochs,
                    {"trial_id": trial_id, "arm": arm, "task": task, "seed": s, **extra},
                    pre,
                )
    return pd.DataFrame(rows)


def _trial_rows(
    rng: np.random.Generator,
    regimes: Mapping[str, int],
    st: str,
    base: float,
    seed_effect: float,
    effect: float,
    noise_sd: float,
    finetune_epochs: int,
    ident: Mapping[str, Any],
    pre: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One trial's rows, one per regime (``ident``: trial id, arm, task, seed, label fraction)."""
    rows = []
    arm, task, s = ident["arm"], ident["task"], ident["seed"]
    for regime, patience in regimes.items():
        shift = -0.02 * (patience == 3)
        val = {
            m: float(np.clip(base + shift + seed_effect + effect + rng.normal(0, noise_sd), 0, 1))
            for m in CLASSIFICATION_METRICS
        }
        if st != "ok":
            val = {m: np.nan for m in CLASSIFICATION_METRICS}
        stop = finetune_epochs if patience == 0 else int(rng.integers(patience + 1, finetune_epochs + 1))
        rows.append(
            {
                "trial_id": ident["trial_id"],
                "arm": arm,
                "task": task,
                "patch_size": 16 if task == "missing_patch" else np.nan,
                "swap_count": 20 if task == "corruption" else np.nan,
                "swap_patch_size": 4 if task == "corruption" else np.nan,
                "lr": 1e-3,
                "pretext_lr": 1e-3 if task != "none" else np.nan,
                "seed": s,
                "regime": regime,
                "patience": patience,
                "stop_epoch": stop if st == "ok" else np.nan,
                "best_epoch": max(1, stop - patience) if st == "ok" else np.nan,
                "status": st,
                "diverged_epoch": 7 if st == "diverged" else np.nan,
                "error": "RuntimeError: out of memory" if st == "error" else "",
                **val,
                "test_loss": np.nan if st != "ok" else float(rng.uniform(0.3, 0.6)),
                "val_loss": np.nan if st != "ok" else float(rng.uniform(0.3, 0.6)),
                **pre,
                "pretext_cached": s % 2 == 0,
                "encoder": "small",
                "image_size": 64,
                "data_fingerprint": "abc123",
                **{k: v for k, v in ident.items() if k == "label_fraction"},
            }
        )
    return rows


def _pretext(task: str, rng: np.random.Generator) -> dict[str, float]:
    out = {m: np.nan for m in (*ROTATION_METRICS, *ROTATION4_METRICS, *IMAGE_METRICS)}
    if task == "rotation":
        out.update({m: float(rng.uniform(0.01, 0.1)) for m in ROTATION_METRICS})
    elif task == "rotation4":
        out.update(
            {"pretext_accuracy": float(rng.uniform(0.5, 0.9)), "pretext_loss": float(rng.uniform(0.2, 1))}
        )
    elif task in ("missing_patch", "corruption"):
        out.update({m: float(rng.uniform(0.1, 0.9)) for m in IMAGE_METRICS})
    return out


def _references(task: str, learned: bool, rng: np.random.Generator) -> dict[str, Any]:
    """One trial's model and reference pretext columns, as the runner writes them: the model beats the best
    reference on the headline metric iff ``learned`` (by a clear margin, so the verdict is unambiguous)."""

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    if task == "rotation":
        ref = u(89, 91)
        return {
            "pretext_headline": "aad_circ_deg",
            "pretext_aad_circ_deg": ref * (0.7 if learned else 1.03),
            "pretext_ref_constant_aad_circ_deg": ref,
            "pretext_ref_aad_circ_deg": ref,
            "pretext_mse": u(0.08, 0.1),
            "pretext_ref_constant_mse": 0.083,
            "pretext_ref_mse": 0.083,
            "pretext_ref_name": "constant",
            "pretext_learned": learned,
        }
    if task == "rotation4":
        return {
            "pretext_headline": "accuracy",
            "pretext_accuracy": 0.6 if learned else 0.24,
            "pretext_ref_chance_accuracy": 0.25,
            "pretext_ref_majority_accuracy": 0.27,
            "pretext_ref_accuracy": 0.27,
            "pretext_ref_name": "majority",
            "pretext_learned": learned,
        }
    if task == "missing_patch":
        meanfill, identity = u(1500, 1600), u(20000, 23000)
        return {
            "pretext_headline": "region_mse",
            "pretext_region_mse": meanfill * (0.6 if learned else 1.2),
            "pretext_mse_mean": u(900, 1000),
            "pretext_ssim_mean": u(0.5, 0.6),
            "pretext_composite_mse": u(20, 30),
            "pretext_composite_ssim": u(0.9, 0.95),
            "pretext_ref_identity_region_mse": identity,
            "pretext_ref_identity_mse_mean": identity / 40,
            "pretext_ref_identity_ssim_mean": 0.8,
            "pretext_ref_meanfill_region_mse": meanfill,
            "pretext_ref_meanfill_mse_mean": meanfill / 40,
            "pretext_ref_meanfill_ssim_mean": 0.85,
            "pretext_ref_region_mse": meanfill,
            "pretext_ref_mse_mean": meanfill / 40,
            "pretext_ref_ssim_mean": 0.85,
            "pretext_ref_biharmonic_region_mse": 700.0,
            "pretext_biharmonic_subset_region_mse": 900.0,
            "pretext_biharmonic_n": 16,
            "pretext_biharmonic_seconds": 1.5,
            "pretext_ref_name": "meanfill",
            "pretext_learned": learned,
            "pretext_beats_classical": False,
        }
    identity = u(1700, 1900)
    return {
        "pretext_headline": "mse_mean",
        "pretext_mse_mean": identity * (0.5 if learned else 1.1),
        "pretext_region_mse": u(3000, 4000),
        "pretext_ssim_mean": u(0.6, 0.7),
        "pretext_ref_identity_mse_mean": identity,
        "pretext_ref_identity_region_mse": 9000.0,
        "pretext_ref_identity_ssim_mean": 0.75,
        "pretext_ref_mse_mean": identity,
        "pretext_ref_region_mse": 9000.0,
        "pretext_ref_ssim_mean": 0.75,
        "pretext_ref_name": "identity",
        "pretext_learned": learned,
    }


def make_history(results: pd.DataFrame, epochs: int = 12, rng_seed: int = 0) -> pd.DataFrame:
    """history.csv-shaped frame: pretext and fine-tune epochs for every trial in ``results`` (with its
    ``label_fraction`` when ``results`` has the column, as the runner writes it)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for t in results.drop_duplicates("trial_id").itertuples(index=False):
        phases = ["finetune"] if t.task == "none" else ["pretext", "finetune"]
        for phase in phases:
            for e in range(1, epochs + 1):
                rows.append(
                    {
                        "trial_id": t.trial_id,
                        "arm": t.arm,
                        "seed": t.seed,
                        "phase": phase,
                        "epoch": e,
                        "loss": 1 / e + rng.normal(0, 0.01),
                        "val_loss": 1 / e + 0.1 + rng.normal(0, 0.02),
                        "val_auc": (0.5 + 0.3 * (1 - 1 / e) + rng.normal(0, 0.01))
                        if phase == "finetune"
                        else np.nan,
                        "test_auc": (0.5 + 0.3 * (1 - 1 / e)) if phase == "finetune" else np.nan,
                        **({"label_fraction": t.label_fraction} if "label_fraction" in results else {}),
                    }
                )
    return pd.DataFrame(rows)


def make_manifest(results: pd.DataFrame) -> dict[str, Any]:
    return {
        "preset": "synthetic",
        "config": {"seeds": sorted(int(s) for s in results["seed"].unique()), "finetune_epochs": 30},
        "versions": {"python": "3.11", "numpy": np.__version__, "pandas": pd.__version__},
        "data_fingerprint": "abc123",
        "git_revision": None,
        "data_check": {
            "summary": "train 600 images, test 200 images\nclass balance 0.3 malignant",
            "ok": True,
            "warnings": ["2 near-duplicate pairs between train and test"],
            "problems": [],
            "near_duplicates": 2,
        },
        "started": "2025-01-01T00:00:00",
        "finished": "2025-01-01T01:00:00",
        "n_trials": int(results["trial_id"].nunique()),
        "errors": [],
    }


def write_run_dir(
    run_dir: Path,
    results: pd.DataFrame,
    history: pd.DataFrame | None = None,
    manifest: dict[str, Any] | None = None,
    example_tasks: Sequence[str] = (),
    example_size: int = 16,
) -> Path:
    """Write results.csv (+ history.csv, manifest.json, examples/<task>_seed0.npz when given)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    results.to_csv(run_dir / "results.csv", index=False)
    if history is not None:
        history.to_csv(run_dir / "history.csv", index=False)
    if manifest is not None:
        (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rng = np.random.default_rng(0)
    if example_tasks:
        (run_dir / "examples").mkdir(exist_ok=True)
    for task in example_tasks:
        shape = (3, example_size, example_size, 3)
        targets = rng.integers(0, 256, shape, dtype=np.uint8)
        inputs = targets.copy()
        inputs[:, 4:8, 4:8] = 0
        np.savez(
            run_dir / "examples" / f"{task}_seed0.npz", inputs=inputs, targets=targets, outputs=targets // 2
        )
    return run_dir


def tidy(**kw) -> pd.DataFrame:
    """``make_results(**kw)`` as the report reads it (``results_table.tidy_results``)."""
    return R.tidy_results(make_results(**kw))


def compare(df: pd.DataFrame, metric: str = "test_auc", alpha: float = 0.05, **kw) -> pd.DataFrame:
    """``analysis.compare_to_baseline`` as the report writes it: with titles, warnings and headlines."""
    comp = A.compare_to_baseline(df, metric, alpha, **kw)
    return T.comparison_table(comp, alpha, len(A.label_fractions(df)) > 1)
