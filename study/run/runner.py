"""Build, run and restore the Ray Tune study; collect its results into the tidy tables.

The driver never imports TensorFlow (trials do, inside `study.trainables.two_stage_trial`), except to fetch
missing ImageNet weights for a `weights = "imagenet"` study before it starts (`prepare_weights`).

Run directory (= Tune's experiment directory, `STORAGE/NAME`; STORAGE is a folder or an `s3://` URI):
    study.json       the preset as run (for `study resume`)
    results.csv      one row per trial x early-stopping regime (the analysis contract)
    history.csv      one row per epoch of each trial (fine-tune epochs from the final result)
    manifest.json    config, versions, data fingerprint and check, git revision, errors
    examples/        pretext inputs/targets/outputs of image tasks, for the report
    pretext_cache/   pretext weights shared between trials

With an object-store STORAGE the driver writes its files into a local copy (`runs/NAME` under the working
directory) and uploads them to the run URI; `study resume` / `study report` accept the URI.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

import study
from study.io import storage as store
from study.spec.config import ConfigError, TrialConfig, regime_name, resolved_task_params
from study.io.files import write_replacing, write_text_replacing
from study.tasks.registry import param_names
from study.spec.resolve import check_local_resources, validate_run_name, validate_study
from study.search_spaces import StudyPreset, arm_name, get_preset, optuna_space, searched_settings
from study.data.trial_source import check_cache_writable, check_command, source_label

STUDY_FILE = "study.json"
PRETEXT_CACHE = "pretext_cache"  # the run's pretext cache, relative to the run
# The driver's own files of a run (the rest of a run directory is Ray Tune's): fetched for resume/report.
DRIVER_FILES = [STUDY_FILE, "results.csv", "history.csv", "manifest.json", "examples"]
# Experiment-state upload period for remote storage (Tune's default is 300 s): what a killed driver can lose.
REMOTE_SYNC_PERIOD_S = 5


class StudyInterrupted(KeyboardInterrupt):
    """The study was stopped (Ctrl-C) before every trial finished; `run_dir` can be resumed."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def _raise_if_interrupted(run_dir: str | Path, grid: Any, preset: StudyPreset) -> None:
    """Tune answers Ctrl-C by saving its state and returning early; unfinished trials then have no error and
    no final result. Stop there instead of writing a results table full of unfinished trials."""
    if preset.search is not None and preset.search.asha:
        return  # ASHA stops trials on purpose: their last result is their outcome
    if any(r.error is None and (r.metrics or {}).get("phase") != "done" for r in grid):
        raise StudyInterrupted(run_dir)


# ---------------------------------------------------------------------------------------------- preparation
def check_storage(storage: str | Path) -> None:
    """Fail at start, not mid-study, when results cannot be written (unwritable path or bucket, full disk)."""
    store.check_writable(store.normalize(storage))


def local_copy(run_uri: str) -> Path:
    """Where the driver writes a run's tables and report: the run itself, or `runs/NAME` for a URI."""
    return Path("runs").resolve() / store.basename(run_uri) if store.is_uri(run_uri) else Path(run_uri)


def open_run(run_dir: str | Path) -> tuple[str, Path]:
    """(run URI, local copy) of an existing run; for a URI the driver's files are downloaded first."""
    run_uri = store.normalize(run_dir)
    local = local_copy(run_uri)
    if store.is_uri(run_uri):
        store.download(run_uri, local, DRIVER_FILES)
    return run_uri, local


def publish(local: Path, run_uri: str) -> None:
    """Upload the driver's files of a run (tables, manifest, report) to its URI; nothing to do for folders."""
    if store.is_uri(run_uri):
        store.upload(local, run_uri)
        print(f"Uploaded results and report to {run_uri}", flush=True)


def prepare_data(preset: StudyPreset) -> tuple[Any, Any]:
    """(data source, CheckReport): generates synthetic lesions if needed and checks the data on the driver.

    The same decoding pass fills the decoded-array cache, so trials on this machine never decode images.
    """
    from study.data.dataset import DataError, check_and_cache, format_problems
    from study.data.trial_source import cache_dir, data_source

    source = data_source(preset.base)
    report = check_and_cache(source, preset.base.image_size, cache_dir(preset.base))
    if not report.ok:
        raise DataError(
            f"dataset {source_label(source)} is not usable:\n"
            + format_problems(report.problems)
            + f"\nRun `{check_command(source)}` for the full report."
        )
    return source, report


def prepare_weights(preset: StudyPreset) -> None:
    """Fetch or find ImageNet weights on the driver before any trial starts (one line with the fix if not).

    Only studies with `weights = "imagenet"` pay for this: it imports Keras (and TensorFlow) on the driver.
    """
    trials = preset.trial_configs() if preset.search is None else [preset.base]
    paths = {t.weights_path for t in trials if t.weights == "imagenet"}
    if not paths:
        return
    from study.train.models import imagenet_weights_file

    for path in paths:
        try:
            imagenet_weights_file(path)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None


def versions() -> dict[str, str]:
    out = {"melanoma-ssl-study": study.__version__}
    for dist in (
        "ray",
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "numpy",
        "pandas",
        "scipy",
        "statsmodels",
        "scikit-image",
        "optuna",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
                check=True,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


ADDRESS_PROBE_S = 5


def check_address(address: str | None) -> None:
    """Fail within seconds, not after Ray's minutes of retries, when nothing listens at `--address HOST:PORT`."""
    import socket

    if not address or address in ("auto", "local") or "://" in address:
        return  # `auto` fails at once in ray.init when no cluster runs here; ray:// is Ray Client
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"--address {address}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), `auto`, or a "
            "ray:// URI"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_PROBE_S).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one (`ray start "
            "--head` or `ray up cluster.yaml`) or leave --address out for the embedded Ray"
        ) from None


def _init_ray(address: str | None, preset: StudyPreset) -> None:
    # Save Tune's experiment state every second (default: >= 10 s) so that a driver killed right after a
    # trial finished does not run that trial again on `study resume`. The state file is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as exc:  # `--address auto` with no cluster on this machine
            raise ConfigError(
                f"--address {address}: {str(exc).splitlines()[0]} Start one (`ray start --head` or `ray up "
                "cluster.yaml`) or leave --address out for the embedded Ray"
            ) from None
    else:
        # "local": always a new embedded Ray, never a cluster someone started on this machine (`ray start`).
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    if preset.gpus_per_trial > 0 and gpus < preset.gpus_per_trial and address:
        # A cluster launched with `ray up` adds GPU workers when trials ask for them (autoscaling).
        print(
            f"The Ray cluster has {gpus:g} GPUs now; trials wait until the autoscaler adds GPU workers "
            "(check with `ray status`).",
            flush=True,
        )
    elif preset.gpus_per_trial > 0 and gpus < preset.gpus_per_trial:
        ray.shutdown()
        raise ConfigError(
            f"--gpus-per-trial {preset.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs; "
            "use --gpus-per-trial 0 here or run on a GPU cluster (--address auto)"
        )


def _trainable(preset: StudyPreset):
    from ray import tune

    from study.trainables import two_stage_trial

    return tune.with_resources(two_stage_trial, {"cpu": preset.cpus_per_trial, "gpu": preset.gpus_per_trial})


def _quiet_tune_console() -> None:
    # Tune's new console prints its experiment box and a TensorBoard hint into Ray's session folder even at
    # verbose=0; its classic one at verbose=0 prints nothing. The study's own hint names the run folder.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def _tuner_configs(preset: StudyPreset, run_uri: str, *, verbose: bool = False):
    """Tune's configs for the study. The console is `study.run.console.StudyProgress` (a line per trial, one
    progress display); `verbose` brings back Tune's own trial tables and result dumps instead."""
    from ray import tune

    from study.run.console import StudyProgress
    from study.run.tune_state import RunGuard

    total = len(preset.trial_configs()) if preset.search is None else preset.search.num_samples
    console = [] if verbose else [StudyProgress(total, max_concurrent=preset.max_concurrent_trials)]
    if not verbose:
        _quiet_tune_console()

    remote = store.is_uri(run_uri)
    run_config = tune.RunConfig(
        name=store.basename(run_uri),
        storage_path=run_uri.rsplit("/", 1)[0] if remote else str(Path(run_uri).parent),
        failure_config=tune.FailureConfig(max_failures=preset.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        sync_config=tune.SyncConfig(sync_period=REMOTE_SYNC_PERIOD_S) if remote else None,
        callbacks=[RunGuard(), *console],
        verbose=2 if verbose else 0,
    )
    if preset.search is None:
        tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=preset.max_concurrent_trials)
        return tune_config, run_config
    from ray.tune.search.optuna import OptunaSearch

    settings = preset.search
    searcher = OptunaSearch(
        space=optuna_space(settings, preset.base.image_size),
        metric="search_score",
        mode="max",
        seed=settings.searcher_seed,
    )
    scheduler = None
    if settings.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="finetune_epoch",
            metric="search_score",
            mode="max",
            max_t=preset.base.finetune_epochs,
            grace_period=max(1, preset.base.finetune_epochs // 4),
        )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=settings.num_samples,
        reuse_actors=True,
        max_concurrent_trials=preset.max_concurrent_trials,
    )
    return tune_config, run_config


# --------------------------------------------------------------------------------------------------- running
def run_study(
    preset: StudyPreset | str = "demo",
    *,
    storage: str | Path | None = None,
    name: str | None = None,
    address: str | None = None,
    write_report: bool = True,
    verbose: bool = False,
) -> Path:
    """Run a resolved study (`resolve.resolve_study`, or a shipped preset's name) on Ray Tune and write
    results.csv, history.csv, manifest.json and the report.

    Returns the run directory. Raises ConfigError / DataError before any trial starts when the study cannot run
    (the study is validated again here, for callers that built it in code).
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    storage_uri = store.normalize(storage or "runs")
    name = f"{preset.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}" if name is None else name
    validate_run_name(name)
    run_uri = store.join(storage_uri, name)
    local = local_copy(run_uri)
    check_storage(storage_uri)
    if store.exists(store.join(run_uri, STUDY_FILE)) or (local / STUDY_FILE).exists():
        raise ConfigError(
            f"--name: {run_uri} already holds a study; resume it with `study resume {run_uri}` "
            "or choose another --name"
        )
    # Relative: trials read it against the run they belong to, so a moved run keeps its cache (pretext_root).
    preset = preset.replace(base=preset.base.replace(pretext_cache_dir=PRETEXT_CACHE))
    validate_study(preset)
    check_local_resources(preset, address)
    check_address(address)
    check_cache_writable(preset.base)
    prepare_weights(preset)
    source, check = prepare_data(preset)
    root = source_label(source)
    if check.warnings:
        from study.data.dataset import format_problems

        shown = 20
        print(f"Data warnings for {root} ({len(check.warnings)}; the study runs):", flush=True)
        print(format_problems(check.warnings[:shown]), flush=True)
        if len(check.warnings) > shown:
            more = check_command(source)
            print(f"  ... and {len(check.warnings) - shown} more: `{more}`", flush=True)

    # Ray first: a start that fails (no GPUs in the cluster, say) leaves no study record, so the name stays free
    # for the next `study run` instead of pointing it to a `study resume` that has nothing to resume.
    _init_ray(address, preset)
    local.mkdir(parents=True, exist_ok=True)
    print(f"Run directory: {run_uri}", flush=True)
    if store.is_uri(run_uri):
        print(f"Local copy of tables and report: {local}", flush=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat()
    (local / STUDY_FILE).write_text(
        json.dumps(
            {
                "preset": preset.to_dict(),
                "started": started,
                "run_uri": run_uri,
                "data_root": str(root),
                "data_check": check.to_dict(),
                "data_check_summary": check.format(),
            },
            indent=2,
            default=str,
        )
    )
    publish(local, run_uri)

    from ray import tune

    tune_config, run_config = _tuner_configs(preset, run_uri, verbose=verbose)
    tuner = tune.Tuner(
        _trainable(preset),
        param_space=preset.param_space() if preset.search is None else _search_constants(preset),
        tune_config=tune_config,
        run_config=run_config,
    )
    grid = tuner.fit()
    _raise_if_interrupted(run_uri, grid, preset)
    finish_run(local, grid, preset, write_report=write_report, run_uri=run_uri)
    return local


def _search_constants(preset: StudyPreset) -> dict[str, Any]:
    fixed = preset.base.to_dict()
    for key in searched_settings(preset.search):
        fixed.pop(key)
    if preset.search.asha:
        fixed["report_every"] = 1  # ASHA compares trials at fine-tune epochs: it needs every epoch's result
    return fixed


def load_study(run_dir: Path, run_uri: str | None = None) -> tuple[StudyPreset, dict[str, Any]]:
    """The preset a run directory (its local copy `run_dir`, fetched from `run_uri`) was started with."""
    path = Path(run_dir) / STUDY_FILE
    if not path.exists():
        raise ConfigError(
            f"{run_uri or run_dir} is not a study run directory (no {STUDY_FILE}); "
            "pass the folder or URI `study run` printed, e.g. runs/demo-20260101-120000"
        )
    saved = json.loads(path.read_text())
    return preset_from_dict(saved["preset"]), saved


def preset_from_dict(d: dict[str, Any]) -> StudyPreset:
    from study.search_spaces import SearchSettings

    d = dict(d)
    d["base"] = TrialConfig.from_dict(d["base"])
    d["arms"] = tuple(d["arms"])
    d["seeds"] = tuple(d["seeds"])
    if d.get("label_fractions") is not None:
        d["label_fractions"] = tuple(d["label_fractions"])
    if d.get("search") is not None:
        d["search"] = SearchSettings.from_dict(d["search"])
    return StudyPreset(**d)


def resume_study(
    run_dir: str | Path, *, address: str | None = None, write_report: bool = True, trust: bool = False
) -> Path:
    """Continue an interrupted study with `Tuner.restore`; finished trials are not run again.

    `run_dir` is the run folder or URI that `study run` printed. Tune's state there is restored only when it
    carries this user's signatures (`study.run.tune_state`), or with `trust` (`--trust-run-dir`). Returns the
    local copy with the results.
    """
    from ray import tune

    from study.run.tune_state import check_remote_signatures, repair_state

    run_uri, local = open_run(run_dir)
    preset, _ = load_study(local, run_uri)
    if not tune.Tuner.can_restore(run_uri):
        raise ConfigError(
            f"{run_uri}: no Ray Tune experiment state to restore (the study stopped before its "
            "first trial started); start it again with `study run`"
        )
    if store.is_uri(run_uri):
        check_remote_signatures(run_uri, trust=trust)
    else:
        repair_state(local, trust=trust)
    check_address(address)
    check_cache_writable(preset.base)
    prepare_weights(preset)
    _init_ray(address, preset)
    _quiet_tune_console()  # the restored run config keeps the study's console (verbose=0 + StudyProgress)
    tuner = tune.Tuner.restore(
        run_uri, trainable=_trainable(preset), resume_unfinished=True, resume_errored=True
    )
    grid = tuner.fit()
    _raise_if_interrupted(run_uri, grid, preset)
    finish_run(local, grid, preset, write_report=write_report, run_uri=run_uri)
    return local


# ------------------------------------------------------------------------------------------------ collecting
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
    import pyarrow.fs as pafs

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
    _copy_examples(run_dir, results, preset, run_uri or str(run_dir))
    saved = json.loads((run_dir / STUDY_FILE).read_text())
    manifest = {
        "preset": preset.name,
        "config": preset.to_dict(),
        "versions": versions(),
        "run_uri": run_uri or str(run_dir),
        "data_root": saved.get("data_root"),
        "data_fingerprint": next(iter(results["data_fingerprint"].dropna()), None) if len(results) else None,
        "git_revision": git_revision(),
        "data_check": {"summary": saved.get("data_check_summary"), **(saved.get("data_check") or {})},
        "started": saved.get("started"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "n_trials": int(results["trial_id"].nunique()) if len(results) else 0,
        "errors": errors,
    }
    write_text_replacing(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))
    if preset.search is not None:
        write_search_summary(run_dir, results)
    elif write_report:
        from study.report.document import write_report as _write_report

        md, html = _write_report(run_dir)
        print(f"Report: {html}")
    if run_uri is not None:
        publish(run_dir, run_uri)


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
    from study.trainables import trial_config_from

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


def collect_results(grid: Any, preset: StudyPreset) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(results, history, errors) from a Tune ResultGrid: the tidy tables of the analysis contract."""
    varied = _varied_params(preset)
    rows, hist, errors = [], [], []
    for result in grid:
        config = result.config or {}
        fields = _arm_fields(config, varied)
        patiences = fields.pop("patiences")
        trial_id = Path(result.path).name if result.path else None
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id", trial_id)
        base = {"trial_id": trial_id, **fields}
        done = metrics.get("phase") == "done"
        pretext = {k: v for k, v in metrics.items() if k.startswith("pretext_")}
        common = {
            "data_fingerprint": metrics.get("data_fingerprint"),
            "pid": metrics.get("pid"),
            "node_id": metrics.get("node_id"),
            "finetune_epochs_run": metrics.get("finetune_epochs_run"),
            # Fine-tune epochs this trial did not redo because it resumed from a checkpoint.
            "finetune_epochs_resumed": metrics.get("finetune_epochs_resumed"),
            # Tune's wall seconds in the trainable (all attempts): what the trial cost.
            "trial_seconds": metrics.get("time_total_s"),
            "search_score": metrics.get("search_score"),
            # True when the trial was restarted (retry or resume) from one of its checkpoints.
            "restored": metrics.get("restored"),
            "diverged_epoch": metrics.get("diverged_epoch"),
            "diverged_phase": metrics.get("diverged_phase"),
            # Linear probe of the encoder the fine-tune started from (study.train.probe).
            **{k: metrics.get(k) for k in ("probe_auc", "probe_val_auc", "probe_c", "probe_s")},
            **pretext,
        }
        if result.error is None and not done and preset.search is not None:
            # Stopped early by the scheduler (ASHA): a censored search trial, scored on its last validation AUC.
            for p in patiences:
                rows.append(
                    {
                        **base,
                        "regime": regime_name(p),
                        "patience": p,
                        "status": "stopped",
                        "error": None,
                        **common,
                    }
                )
        elif result.error is not None or not done:
            message = _one_line(result.error) if result.error is not None else "trial did not finish"
            errors.append(
                {
                    "trial_id": trial_id,
                    "arm": fields["arm"],
                    "seed": fields["seed"],
                    "label_fraction": fields["label_fraction"],
                    "error": message,
                }
            )
            for p in patiences:
                rows.append(
                    {
                        **base,
                        "regime": regime_name(p),
                        "patience": p,
                        "status": "error",
                        "error": message,
                        **common,
                    }
                )
        else:
            regimes = metrics.get("regimes") or {}
            for p in patiences:
                name = regime_name(p)
                reg = dict(regimes.get(name) or {})
                # A regime that would have stopped before the divergence is a valid result (see run_finetune).
                diverged = bool(reg.pop("diverged", False)) or not reg
                status = "diverged" if diverged else "ok"
                rows.append(
                    {**base, "regime": name, "patience": p, "status": status, "error": None, **reg, **common}
                )
        df = result.metrics_dataframe
        if df is not None and "phase" in df:
            h = df[df["phase"].isin(["pretext", "finetune"])]
            logged = metrics.get("finetune_history") if done else None
            if isinstance(logged, str):
                logged = json.loads(logged)
            if isinstance(logged, list):
                # Every fine-tune epoch's logs, from the final result (intermediate results come only every
                # `report_every` epochs): they replace the reported fine-tune rows.
                h = pd.concat([h[h["phase"] != "finetune"], pd.DataFrame(logged).assign(phase="finetune")])
            h = h.drop(columns=[c for c in ("trial_id", "arm", "seed", "label_fraction") if c in h])
            hist.append(
                h.assign(
                    trial_id=trial_id,
                    arm=fields["arm"],
                    seed=fields["seed"],
                    label_fraction=fields["label_fraction"],
                )
            )
    results = pd.DataFrame(rows)
    if len(results):
        results = results.sort_values(["label_fraction", "regime", "arm", "seed"], kind="stable").reset_index(
            drop=True
        )
        # Identity and outcome first, pretext metrics next, provenance last.
        pretext_cols = sorted(c for c in results if c.startswith("pretext_"))
        tail = [
            c
            for c in (
                "search_score",
                "finetune_epochs_run",
                "finetune_epochs_resumed",
                "trial_seconds",
                "encoder",
                "image_size",
                "threads",
                "mixed_precision",
                "data_fingerprint",
                "pid",
                "node_id",
                "restored",
            )
            if c in results
        ]
        head = [c for c in results if c not in pretext_cols and c not in tail]
        results = results[head + pretext_cols + tail]
    history = (
        pd.concat(hist, ignore_index=True)
        if hist
        else pd.DataFrame(columns=["trial_id", "arm", "seed", "label_fraction", "phase", "epoch"])
    )
    # A trial restarted from a checkpoint reports the epochs after that checkpoint again: keep the last.
    history = history.drop_duplicates(["trial_id", "phase", "epoch"], keep="last")
    # Rows by trial (each trial's in the order it reported them), columns by name: the same table whatever
    # order Tune lists its trials in.
    history = history.sort_values("trial_id", kind="stable").reset_index(drop=True)
    ident = ["trial_id", "arm", "seed", "label_fraction", "phase", "epoch"]
    keep = ident + [c for c in ("pid", "node_id", "loss") if c in history]
    keep += sorted(c for c in history.columns if c.startswith("val_")) + sorted(
        c for c in history.columns if c.startswith("test_")
    )
    return results, history[keep], errors


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] or [type(error).__name__]
    return tail[0][:300]


def _copy_examples(run_dir: Path, results: pd.DataFrame, preset: StudyPreset, run_uri: str) -> None:
    from study.data.trial_source import pretext_root

    if not len(results) or "pretext_key" not in results or not preset.base.pretext_cache_dir:
        return
    cache = pretext_root(preset.base, run_uri)
    out = run_dir / "examples"
    if out.is_symlink():  # never write through a link planted in the run directory
        out.unlink()
    for (task, seed, key), _ in results.groupby(["task", "seed", "pretext_key"], dropna=True):
        src = store.join(cache, str(key), "examples.npz")
        if store.exists(src):
            out.mkdir(exist_ok=True)
            fs, path = store.filesystem(src)
            with fs.open_input_stream(path) as f:
                data = f.read()
            write_replacing(out / f"{task}_seed{seed}.npz", lambda w, data=data: w.write(data))
