"""The tidy tables of a run: results.csv and history.csv from Tune's results (the analysis contract).

`collect_results` reads a `ResultGrid` (or `TrialRecord`s read back from Tune's JSON files by
`read_trial_records`) into one row per trial x early-stopping regime and one row per epoch; the column order
is `study.spec.schema`'s. `finish_run` writes them with the manifest and the report; `collect_from_experiment`
rebuilds them for a run whose driver died. No Ray here: `study report` reads runs without starting it.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.io import storage as store
from study.io.files import (
    MAX_READ_BYTES,
    UnsafeFileError,
    parse_json,
    read_json,
    read_regular,
    write_text_replacing,
)
from study.report.sequential import extend_hint
from study.report.write import write_report as _write_report
from study.run.rundir import STUDY_FILE, copy_examples, load_study, open_run, publish, write_manifest
from study.search_spaces import searched_settings
from study.spec import schema
from study.spec.config import (
    ConfigError,
    regime_name,
    resolved_task_params,
    trial_config_from,
    validate_trial,
)
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


def read_trial_records(run_uri: str, *, history: bool = True) -> list[TrialRecord]:
    """Every trial folder of a run (folder or URI) with a result.json, read as JSON text only.

    The same tables as `Tuner.restore(...).get_results()` would give (the metrics frame is built the way
    Tune's ExperimentAnalysis builds it), without unpickling tuner.pkl or the experiment state. The records
    come with the run: each file is read as a bounded regular file (never through a symlink, never a FIFO),
    its JSON bounded in depth, and each trial's config validated as a study's trials are
    (`validate_trial`: types and ranges), so no value read here can name a path or size an allocation;
    `ConfigError`, one line naming the file, otherwise. `history=False` reads each trial's last result only
    (no metrics frame): enough for results.csv.
    """
    import pyarrow.fs as pafs  # with Ray, so only where a run is read back

    fs, root = store.filesystem(run_uri)
    root = root.rstrip("/")
    local = isinstance(fs, pafs.LocalFileSystem)

    def read(path: str) -> str | None:
        try:
            if local:
                data = read_regular(path)
            else:
                with fs.open_input_stream(path) as f:
                    data = f.read(MAX_READ_BYTES + 1)
                if len(data) > MAX_READ_BYTES:
                    raise UnsafeFileError(
                        f"{path}: more than the {MAX_READ_BYTES:,} bytes a run file may hold"
                    )
            return data.decode("utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: is not UTF-8 text; the run is damaged") from None
        except UnsafeFileError as exc:
            raise ConfigError(f"{exc}; move it out of the run folder") from None

    records = []
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for info in sorted(infos, key=lambda i: i.base_name):
        # Trial folders are the run's own: dot-folders and (local) symbolic links are not read.
        if info.type != pafs.FileType.Directory or info.base_name.startswith("."):
            continue
        if local and os.path.islink(info.path):
            continue
        text = read(f"{info.path}/result.json")
        if text is None:
            continue
        if not history:
            text = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        records.append(_trial_record(info.path, text, read(f"{info.path}/params.json"), read))
    return records


def _trial_record(path: str, text: str, params: str | None, read: Any) -> TrialRecord:
    """One trial's record from its result.json `text` and params.json `params` (validated, see
    `read_trial_records`); `read(path)` reads its error.txt."""
    try:
        rows = [parse_json(line, f"{path}/result.json") for line in text.splitlines() if line.strip()]
        config = (
            parse_json(params, f"{path}/params.json")
            if params
            else (rows[-1].get("config") if rows else None)
        )
    except (UnsafeFileError, AttributeError) as exc:
        raise ConfigError(f"{exc}; Tune's trial record is damaged") from None
    if not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{path}/result.json: a line is not a JSON object; Tune's trial record is damaged")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: Tune's trial record has no config (params.json); the run is damaged")
    try:
        validate_trial(trial_config_from(config))
    except ConfigError as exc:
        raise ConfigError(f"{path}/params.json: {exc}; Tune's trial record is damaged") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{path}/params.json: not a trial config ({exc}); Tune's trial record is damaged"
        ) from None
    metrics = rows[-1] if rows else {}
    failure = read(f"{path}/error.txt")
    error = None
    if failure is not None and metrics.get("phase") != "done":
        error = TrialFailed(failure.strip() or "trial failed (empty error.txt)")
    frame = pd.json_normalize(rows, sep="/") if rows else None
    return TrialRecord(path, config, metrics, frame, error)


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


def varied_params(preset: StudyPreset) -> set[str]:
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
        logged = parse_json(logged, "finetune_history")
    if isinstance(logged, list):
        # Every fine-tune epoch's logs, from the final result (intermediate results come only every
        # `report_every` epochs): they replace the reported fine-tune rows.
        h = pd.concat([h[h["phase"] != "finetune"], pd.DataFrame(logged).assign(phase="finetune")])
    h = h.drop(columns=[c for c in ident if c in h])
    return h.assign(**ident)


def collect_results(grid: Any, preset: StudyPreset) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(results, history, errors) from a Tune ResultGrid: the tidy tables of the analysis contract."""
    varied = varied_params(preset)
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


#: The columns of results.csv that `study report` checks against the trials' own records (`edited_results`):
#: the design a row belongs to and every value a trial measured (regime outcome, divergence, probe, pretext).
CHECKED_COLUMNS = (
    "task",
    "seed",
    "label_fraction",
    # The status and the regime's outcome; not the error text, which Tune words differently in its records.
    *(c for c in schema.REGIME_COLUMNS[2:] if c != "error"),
    *schema.TRIAL_COLUMNS,
)


def edited_results(run_uri: str, local: Path) -> list[str]:
    """Where `local/results.csv` says something the trials' own records (result.json, params.json) do not:
    one line per kind of difference, each with an example and the fix; [] when they agree, or when the run
    has no study record and trial records to check it against (a results table given on its own). A run whose
    records cannot be read gets one line saying the table was not checked."""
    path = local / "results.csv"
    if not (local / STUDY_FILE).exists():
        if any(local.glob("*/params.json")):  # trial records without the study record that reads them
            return [f"{path} was not checked against the trials' own records ({STUDY_FILE} is missing)"]
        return []
    try:
        preset, _ = load_study(local, run_uri)
        records = read_trial_records(run_uri, history=False)
        if not records:
            return []
        expected, _, _ = collect_results(records, preset)
        table = read_regular(path)
    except (ConfigError, OSError, UnsafeFileError) as exc:
        return [f"{path} was not checked against the trials' own records ({exc})"]
    try:
        actual = pd.read_csv(io.BytesIO(table), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError):
        return []  # the report's own reading of results.csv says what is wrong with it
    recorded = pd.read_csv(io.StringIO(expected.to_csv(index=False)), dtype=str, keep_default_na=False)
    return _table_differences(path, actual, recorded)


def _table_differences(path: Path, actual: pd.DataFrame, recorded: pd.DataFrame) -> list[str]:
    key = ["trial_id", "regime"]
    if not set(key) <= set(actual.columns):
        return []
    fix = "delete it and run `study report` again to rebuild it from the records"
    merged = actual.merge(recorded, on=key, how="outer", suffixes=("", " recorded"), indicator=True)
    out = []
    extra = merged[merged["_merge"] == "left_only"]
    missing = merged[merged["_merge"] == "right_only"]
    if len(extra):
        r = extra.iloc[0]
        out.append(
            f"{path}: {len(extra)} row(s) match no trial's record (e.g. trial {r['trial_id']}, regime "
            f"{r['regime']}): rows were added after the run; {fix}"
        )
    if len(missing):
        r = missing.iloc[0]
        out.append(
            f"{path}: {len(missing)} recorded trial row(s) are missing (e.g. trial {r['trial_id']}, regime "
            f"{r['regime']}): rows were removed after the run; {fix}"
        )
    both = merged[merged["_merge"] == "both"]
    changed = []
    for col in [c for c in CHECKED_COLUMNS if c in actual.columns and c in recorded.columns]:
        differs = ~_same_values(both[col], both[f"{col} recorded"])
        changed += [(r, col) for _, r in both[differs].iterrows()]
    if changed:
        r, col = changed[0]
        out.append(
            f"{path}: {len(changed)} value(s) differ from the trials' own records, e.g. trial {r['trial_id']}, "
            f"regime {r['regime']}: {col} = {r[col] or 'empty'} here but {r[col + ' recorded'] or 'empty'} in "
            f"its result.json; the table was edited after the run and the report shows the edited values; {fix}"
        )
    return out


def _same_values(a: pd.Series, b: pd.Series) -> pd.Series:
    """Cell by cell: the same number (to 1e-9), both empty, or the same text."""
    x, y = pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")
    numbers = x.notna() & y.notna()
    close = pd.Series(np.isclose(x.fillna(0), y.fillna(0), rtol=1e-9, atol=1e-12), index=a.index)
    text = a.fillna("").str.strip() == b.fillna("").str.strip()
    return (numbers & close) | (~numbers & text)


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
    look: StudyPreset | None = None,
    looks: list[dict[str, Any]] | None = None,
) -> None:
    """Write results.csv, history.csv, examples/ and manifest.json from a ResultGrid into the local copy
    `run_dir`, then the report; upload them when the run lives at a URI.

    `look`: the trials `grid` holds are one look of an extended study (`study.run.extend`; `preset` is then the
    whole study): their rows are appended to the tables, whose earlier lines stay as they are. `looks`: the
    manifest's record of the study's looks."""
    ran = look or preset
    try:
        results, history, errors = collect_results(grid, preset)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        if complete:  # Tune's own ResultGrid: a fault of ours, shown as such
            raise
        raise ConfigError(  # trial records read back from a run folder: data that came with the run
            f"{run_uri or run_dir}: the trials' records (result.json) do not hold what a trial of this study "
            f"reports ({type(exc).__name__}: {str(exc)[:200]}); the run is damaged"
        ) from None
    # After a finished fit every planned trial must be there (a run read back by `study report` may be partial).
    if ran.search is None and complete:
        expected, got = len(ran.trial_configs()), int(results["trial_id"].nunique()) if len(results) else 0
        if got != expected:
            raise ConfigError(
                f"{run_uri or run_dir}: Ray Tune returned {got} trials but the study has {expected}; no results "
                "written (its experiment state is damaged); start the study again with `study run`"
            )
    if look is None:
        # Never through a symlink planted in the run directory (`study report` may rebuild a run from elsewhere).
        write_text_replacing(run_dir / "results.csv", results.to_csv(index=False))
        write_text_replacing(run_dir / "history.csv", history.to_csv(index=False))
    else:
        errors = _earlier_errors(run_dir) + errors
        append_rows(run_dir / "results.csv", results)
        append_rows(run_dir / "history.csv", history)
        results = pd.read_csv(run_dir / "results.csv")
    copy_examples(run_dir, results, preset, run_uri or str(run_dir))
    write_manifest(run_dir, preset, results, errors, run_uri or str(run_dir), looks=looks)
    if preset.search is not None:
        write_search_summary(run_dir, results)
    elif write_report:
        md, html = _write_report(run_dir)
        print(f"Report: {html}")
        hint = extend_hint(run_dir, run_uri or str(run_dir))
        if hint:
            print(hint)
    if run_uri is not None:
        publish(run_dir, run_uri)


def _earlier_errors(run_dir: Path) -> list[dict]:
    """The failed trials the manifest lists from the study's earlier looks."""
    try:
        errors = read_json(run_dir / "manifest.json").get("errors") or []
    except (OSError, UnsafeFileError, AttributeError):
        return []
    return [e for e in errors if isinstance(e, dict)]


def append_rows(path: Path, new: pd.DataFrame) -> None:
    """Append `new` to the CSV at `path`, leaving its existing lines as they are (byte for byte): the new rows
    take the file's columns; a column only they have rewrites the whole table instead."""
    if not len(new):
        return
    if not path.exists():
        write_text_replacing(path, new.to_csv(index=False))
        return
    text = read_regular(path).decode()
    header = pd.read_csv(io.StringIO(text), nrows=0).columns.tolist()
    if set(new.columns) <= set(header):
        body = new.reindex(columns=header).to_csv(index=False, header=False)
        write_text_replacing(path, text + ("" if text.endswith("\n") else "\n") + body)
        return
    old = pd.read_csv(io.StringIO(text))
    write_text_replacing(path, pd.concat([old, new], ignore_index=True).to_csv(index=False))
