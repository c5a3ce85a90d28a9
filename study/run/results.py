"""The tidy tables of a run: results.csv and history.csv from Tune's results (the analysis contract).

`collect_results` reads a `ResultGrid` (or `TrialRecord`s read back from Tune's JSON files by
`read_trial_records`) into one row per trial x early-stopping regime and one row per epoch; the column order
is `study.spec.schema`'s. `finish_run` writes them with the manifest and the report; `collect_from_experiment`
rebuilds them for a run whose driver died. No Ray here: `study report` reads runs without starting it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study.io import storage as store
from study.io.files import write_text_replacing
from study.report.write import write_report as _write_report
from study.run.rundir import copy_examples, load_study, open_run, publish, write_manifest
from study.search_spaces import searched_settings
from study.spec import schema
from study.spec.config import ConfigError, regime_name, resolved_task_params, trial_config_from
from study.spec.presets import StudyPreset, arm_name
from study.tasks.registry import param_names


@dataclass
class TrialRecord:
    """One trial as Tune's JSON files describe it: the parts of a `ResultGrid` entry `collect_results` reads."""

    path: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    metrics_dataframe: pd.DataFrame | None
    error: BaseException | None


class TrialFailed(Exception):
    """A trial's failure as Tune recorded it in the trial's error.txt."""


def read_trial_records(run_uri: str) -> list[TrialRecord]:
    """Every trial folder of a run (folder or URI) with a result.json, read as JSON text only.

    The same tables as `Tuner.restore(...).get_results()` would give (the metrics frame is built the way
    Tune's ExperimentAnalysis builds it), without unpickling tuner.pkl or the experiment state.
    """
    import pyarrow.fs as pafs  # with Ray, so only where a run is read back

    fs, root = store.filesystem(run_uri)
    root = root.rstrip("/")

    def read(path: str) -> str | None:
        try:
            with fs.open_input_stream(path) as f:
                return f.read().decode("utf-8")
        except FileNotFoundError:
            return None

    records = []
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for info in sorted(infos, key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory:
            continue
        text = read(f"{info.path}/result.json")
        if text is None:
            continue
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            params = read(f"{info.path}/params.json")
            config = json.loads(params) if params else (rows[-1].get("config") if rows else None)
        except ValueError as exc:
            raise ConfigError(
                f"{info.path}: Tune's trial record is not JSON ({exc}); the run is damaged"
            ) from None
        if not isinstance(config, dict):
            raise ConfigError(
                f"{info.path}: Tune's trial record has no config (params.json); the run is damaged"
            )
        metrics = rows[-1] if rows else {}
        failure = read(f"{info.path}/error.txt")
        error = None
        if failure is not None and metrics.get("phase") != "done":
            error = TrialFailed(failure.strip() or "trial failed (empty error.txt)")
        frame = pd.json_normalize(rows, sep="/") if rows else None
        records.append(TrialRecord(info.path, config, metrics, frame, error))
    return records


def write_search_summary(run_dir: Path, results: pd.DataFrame) -> pd.DataFrame:
    """`search.csv`: one row per searched configuration, best validation AUC first (test AUC shown, not used)."""
    cols = [
        "trial_id",
        "task",
        *param_names(),
        "lr",
        "pretext_lr",
        "pretext_batch_size",
        "status",
        "search_score",
        "stop_epoch",
        "test_auc",
    ]
    table = results[[c for c in cols if c in results]].sort_values("search_score", ascending=False)
    write_text_replacing(run_dir / "search.csv", table.to_csv(index=False))
    print("Best configurations by validation AUC (confirm the winner with a seeded `study run`):")
    print(table.head(5).to_string(index=False))
    return table


def _arm_fields(config: dict[str, Any], varied: set[str]) -> dict[str, Any]:
    trial = trial_config_from(config)
    params = resolved_task_params(trial)
    shown = {
        "task": trial.task,
        **params,
        **{k: v for k, v in (config.get("arm") or {}).items() if k in varied},
    }
    return {
        "arm": arm_name(shown, varied),
        "task": trial.task,
        # One column per registered task parameter (empty where the trial's task does not use it).
        **{name: params.get(name) for name in param_names()},
        "lr": trial.lr,
        "pretext_lr": trial.pretext_lr if trial.task != "none" else math.nan,
        "pretext_batch_size": trial.pretext_batch_size if trial.task != "none" else math.nan,
        "seed": trial.seed,
        # Fraction of the training labels the fine-tune used (label-efficiency studies; 1.0 otherwise).
        "label_fraction": trial.label_fraction,
        "encoder": trial.encoder,
        "image_size": trial.image_size,
        "threads": trial.threads,
        "mixed_precision": trial.mixed_precision,
        "patiences": trial.patiences,
    }


def _varied_params(preset: StudyPreset) -> set[str]:
    """Arm settings that take more than one value among the arms of one task (shown in arm names)."""
    if preset.search is not None:
        return {*param_names(), *searched_settings(preset.search)} - {"task"}
    varied = set()
    for key in {k for a in preset.arms for k in a} - {"task"}:
        for task in {a["task"] for a in preset.arms}:
            if len({json.dumps(a.get(key)) for a in preset.arms if a["task"] == task}) > 1:
                varied.add(key)
    return varied


def _trial_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The columns a trial's final result gives every one of its rows (provenance, probe, pretext)."""
    return {
        "data_fingerprint": metrics.get("data_fingerprint"),
        "pid": metrics.get("pid"),
        "node_id": metrics.get("node_id"),
        "finetune_epochs_run": metrics.get("finetune_epochs_run"),
        "finetune_epochs_resumed": metrics.get("finetune_epochs_resumed"),
        "trial_seconds": metrics.get("time_total_s"),
        "search_score": metrics.get("search_score"),
        "restored": metrics.get("restored"),
        "diverged_epoch": metrics.get("diverged_epoch"),
        "diverged_phase": metrics.get("diverged_phase"),
        # Linear probe of the encoder the fine-tune started from (study.train.probe).
        **{k: metrics.get(k) for k in ("probe_auc", "probe_val_auc", "probe_c", "probe_s")},
        **{k: v for k, v in metrics.items() if k.startswith(schema.PRETEXT_PREFIX)},
    }


def _trial_rows(
    result: Any, base: dict[str, Any], patiences: tuple[int, ...], search: bool
) -> tuple[list[dict], str | None]:
    """(one row per early-stopping regime of a trial, its failure or None): the regimes' outcomes, or
    `stopped` / `error` for all of them."""
    metrics = result.metrics or {}
    common = _trial_fields(metrics)
    done = metrics.get("phase") == "done"
    if result.error is not None or not done:
        # Unfinished without an error in a search: stopped early by the scheduler (ASHA), a censored trial
        # scored on its last validation AUC. Otherwise the trial failed.
        stopped = result.error is None and search
        failure = None if stopped else _failure(result)
        outcome = {"status": "stopped" if stopped else "error", "error": failure}
        rows = [{**base, "regime": regime_name(p), "patience": p, **outcome, **common} for p in patiences]
        return rows, failure
    regimes = metrics.get("regimes") or {}
    rows = []
    for p in patiences:
        name = regime_name(p)
        reg = dict(regimes.get(name) or {})
        # A regime that would have stopped before the divergence is a valid result (see run_finetune).
        diverged = bool(reg.pop("diverged", False)) or not reg
        status = "diverged" if diverged else "ok"
        rows.append({**base, "regime": name, "patience": p, "status": status, "error": None, **reg, **common})
    return rows, None


def _trial_history(result: Any, ident: dict[str, Any]) -> pd.DataFrame | None:
    """The trial's epochs (pretext and fine-tune), with `ident` (trial id, arm, seed, label fraction)."""
    df = result.metrics_dataframe
    if df is None or "phase" not in df:
        return None
    metrics = result.metrics or {}
    h = df[df["phase"].isin(["pretext", "finetune"])]
    logged = metrics.get("finetune_history") if metrics.get("phase") == "done" else None
    if isinstance(logged, str):
        logged = json.loads(logged)
    if isinstance(logged, list):
        # Every fine-tune epoch's logs, from the final result (intermediate results come only every
        # `report_every` epochs): they replace the reported fine-tune rows.
        h = pd.concat([h[h["phase"] != "finetune"], pd.DataFrame(logged).assign(phase="finetune")])
    h = h.drop(columns=[c for c in ident if c in h])
    return h.assign(**ident)


def collect_results(grid: Any, preset: StudyPreset) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(results, history, errors) from a Tune ResultGrid: the tidy tables of the analysis contract."""
    varied = _varied_params(preset)
    rows, hist, errors = [], [], []
    for result in grid:
        fields = _arm_fields(result.config or {}, varied)
        patiences = fields.pop("patiences")
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id", Path(result.path).name if result.path else None)
        base = {"trial_id": trial_id, **fields}
        trial_rows, failure = _trial_rows(result, base, patiences, preset.search is not None)
        rows += trial_rows
        ident = {k: fields[k] for k in ("arm", "seed", "label_fraction")}
        if failure is not None:
            errors.append({"trial_id": trial_id, **ident, "error": failure})
        history = _trial_history(result, {"trial_id": trial_id, **ident})
        if history is not None:
            hist.append(history)
    return _results_table(rows), _history_table(hist), errors


def _results_table(rows: list[dict]) -> pd.DataFrame:
    """The rows by label fraction, regime, arm and seed; the columns in `schema.results_column_order`."""
    results = pd.DataFrame(rows)
    if not len(results):
        return results
    results = results.sort_values(["label_fraction", "regime", "arm", "seed"], kind="stable")
    results = results.reset_index(drop=True)
    return results[schema.results_column_order(results.columns)]


def _history_table(hist: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows by trial (each trial's in the order it reported them), columns by name
    (`schema.history_column_order`): the same table whatever order Tune lists its trials in."""
    empty = pd.DataFrame(columns=list(schema.HISTORY_IDENTITY))
    history = pd.concat(hist, ignore_index=True) if hist else empty
    # A trial restarted from a checkpoint reports the epochs after that checkpoint again: keep the last.
    history = history.drop_duplicates(["trial_id", "phase", "epoch"], keep="last")
    history = history.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return history[schema.history_column_order(history.columns)]


def _failure(result: Any) -> str:
    return _one_line(result.error) if result.error is not None else "trial did not finish"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] or [type(error).__name__]
    return tail[0][:300]


def collect_from_experiment(run_dir: str | Path) -> Path:
    """Rebuild results.csv, history.csv and manifest.json of a run from Tune's per-trial JSON records.

    For a run whose driver died before writing them; finished trials are read, nothing is run and nothing is
    unpickled (`read_trial_records`), so a run directory from anywhere is safe to report on. Returns the
    local copy holding the tables.
    """
    run_uri, local = open_run(run_dir)
    preset, _ = load_study(local, run_uri)
    records = read_trial_records(run_uri)
    if not records:
        raise ConfigError(f"{run_uri}: no trial records (result.json) to read; was the study started?")
    finish_run(local, records, preset, write_report=False, run_uri=run_uri, complete=False)
    return local


def finish_run(
    run_dir: Path,
    grid: Any,
    preset: StudyPreset,
    *,
    write_report: bool = True,
    run_uri: str | None = None,
    complete: bool = True,
) -> None:
    """Write results.csv, history.csv, examples/ and manifest.json from a ResultGrid into the local copy
    `run_dir`, then the report; upload them when the run lives at a URI."""
    results, history, errors = collect_results(grid, preset)
    # After a finished fit every planned trial must be there (a run read back by `study report` may be partial).
    if preset.search is None and complete:
        expected, got = len(preset.trial_configs()), int(results["trial_id"].nunique()) if len(results) else 0
        if got != expected:
            raise ConfigError(
                f"{run_uri or run_dir}: Ray Tune returned {got} trials but the study has {expected}; no results "
                "written (its experiment state is damaged); start the study again with `study run`"
            )
    # Never through a symlink planted in the run directory (`study report` may rebuild a run from elsewhere).
    write_text_replacing(run_dir / "results.csv", results.to_csv(index=False))
    write_text_replacing(run_dir / "history.csv", history.to_csv(index=False))
    copy_examples(run_dir, results, preset, run_uri or str(run_dir))
    write_manifest(run_dir, preset, results, errors, run_uri or str(run_dir))
    if preset.search is not None:
        write_search_summary(run_dir, results)
    elif write_report:
        md, html = _write_report(run_dir)
        print(f"Report: {html}")
    if run_uri is not None:
        publish(run_dir, run_uri)
