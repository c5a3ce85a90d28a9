"""Build, run and restore the Ray Tune study of a resolved study (`study.spec.resolve`), then write its tables.

The driver never imports TensorFlow (trials do, inside `study.trainables.two_stage_trial`), except to fetch
missing ImageNet weights for a `weights = "imagenet"` study before it starts (`prepare_weights`); it imports
Ray (with this module). The run directory's files are `study.run.rundir`'s; the tables are `study.run.results`'.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from ray import tune

from study.data import DataError, check_and_cache, format_problems
from study.data.trial_source import cache_dir, check_cache_writable, check_command, data_source, source_label
from study.io import storage as store
from study.io.seal import RunSeal
from study.report.write import write_report as write_report_files
from study.run.cluster import check_address, init_ray
from study.run.console import StudyProgress
from study.run.extend import (
    AllDecided,
    check_same_code,
    check_same_data,
    full_preset,
    look_preset,
    look_targets,
    manifest_looks,
    pending_look,
    plan_look,
    read_looks,
    write_looks,
)
from study.run.results import finish_run
from study.run.rundir import (
    check_storage,
    holds_study,
    load_study,
    local_copy,
    open_run,
    publish,
    write_study_record,
)
from study.run.tune_state import (
    RunGuard,
    check_remote_signatures,
    check_sealed,
    moved_modules,
    repair_state,
    restored_or_stop,
    run_seal,
    unsealed_message,
)
from study.search_spaces import optuna_space, param_space
from study.spec.backend import study_backend
from study.spec.config import ConfigError
from study.spec.presets import StudyPreset
from study.spec.resolve import check_local_resources, check_resolved, validate_run_name
from study.trainables import two_stage_trial

# Experiment-state upload period for remote storage (Tune's default is 300 s): what a killed driver can lose.
REMOTE_SYNC_PERIOD_S = 5
# Data warnings printed before a study starts (`study data check` lists them all).
SHOWN_WARNINGS = 20


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
def prepare_data(preset: StudyPreset) -> tuple[Any, Any]:
    """(data source, CheckReport): generates synthetic lesions if needed and checks the data on the driver.

    The same decoding pass fills the decoded-array cache, so trials on this machine never decode images.
    """
    source = data_source(preset.base)
    report = check_and_cache(source, preset.base.image_size, cache_dir(preset.base))
    if not report.ok:
        raise DataError(
            f"dataset {source_label(source)} is not usable:\n"
            + format_problems(report.problems)
            + f"\nRun `{check_command(source)}` for the full report."
        )
    return source, report


def _print_data_warnings(source: Any, check: Any) -> None:
    if not check.warnings:
        return
    print(f"Data warnings for {source_label(source)} ({len(check.warnings)}; the study runs):", flush=True)
    print(format_problems(check.warnings[:SHOWN_WARNINGS]), flush=True)
    if len(check.warnings) > SHOWN_WARNINGS:
        more = check_command(source)
        print(f"  ... and {len(check.warnings) - SHOWN_WARNINGS} more: `{more}`", flush=True)


def prepare_weights(preset: StudyPreset) -> None:
    """Fetch or find ImageNet weights on the driver before any trial starts (one line with the fix if not).

    Only studies with `weights = "imagenet"` pay for this: it imports Keras (and TensorFlow) on the driver.
    """
    trials = preset.trial_configs() if preset.search is None else [preset.base]
    paths = {t.weights_path for t in trials if t.weights == "imagenet"}
    if not paths:
        return
    from study.train.models import imagenet_weights_file  # imports TensorFlow: only for these studies

    for path in paths:
        try:
            imagenet_weights_file(path)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None


# ----------------------------------------------------------------------------------------------- the Tuner
def _trainable(preset: StudyPreset, seal: RunSeal):
    """The trial with its resources and the run's seal; the seal reaches the trials through Ray's object store
    (`with_parameters`), never through a file of the run (Tune's state and tuner.pkl leave the trainable out)."""
    trial = tune.with_parameters(two_stage_trial, run_seal=seal)
    return tune.with_resources(trial, {"cpu": preset.cpus_per_trial, "gpu": preset.gpus_per_trial})


def _quiet_tune_console() -> None:
    # Tune's new console prints its experiment box and a TensorBoard hint into Ray's session folder even at
    # verbose=0; its classic one at verbose=0 prints nothing. The study's own hint names the run folder.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def tuner_configs(preset: StudyPreset, run_uri: str, *, verbose: bool = False):
    """Tune's (TuneConfig, RunConfig) for the study. The console is `study.run.console.StudyProgress` (a line
    per trial, one progress display); `verbose` brings back Tune's own trial tables and result dumps instead."""
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
    return _search_config(preset), run_config


def _search_config(preset: StudyPreset):
    """Optuna on validation AUC (`search_score`), with ASHA stopping weak trials when the study asks."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch  # imports Optuna: only for searches

    settings = preset.search
    searcher = OptunaSearch(
        space=optuna_space(settings, preset.base.image_size),
        metric="search_score",
        mode="max",
        seed=settings.searcher_seed,
    )
    scheduler = None
    if settings.asha:
        scheduler = ASHAScheduler(
            time_attr="finetune_epoch",
            metric="search_score",
            mode="max",
            max_t=preset.base.finetune_epochs,
            grace_period=max(1, preset.base.finetune_epochs // 4),
        )
    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=settings.num_samples,
        reuse_actors=True,
        max_concurrent_trials=preset.max_concurrent_trials,
    )


# --------------------------------------------------------------------------------------------------- running
def run_study(
    preset: StudyPreset,
    *,
    storage: str | Path | None = None,
    name: str | None = None,
    address: str | None = None,
    write_report: bool = True,
    verbose: bool = False,
) -> Path:
    """Run a resolved study (`study.spec.resolve.resolve_study` / `finalize_study`) on Ray Tune and write
    results.csv, history.csv, manifest.json and the report.

    Returns the run directory. Raises ConfigError / DataError before any trial starts when the study cannot run.
    """
    check_resolved(preset)
    storage_uri = store.normalize(storage or "runs")
    name = f"{preset.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}" if name is None else name
    validate_run_name(name)
    run_uri = store.join(storage_uri, name)
    local = local_copy(run_uri)
    # Within seconds and before anything is written: the cluster answers, or this machine can run a trial.
    check_local_resources(preset, address)
    check_address(address, preset)
    check_storage(storage_uri)
    if holds_study(run_uri, local):
        raise ConfigError(
            f"--name: {run_uri} already holds a study; resume it with `study resume {run_uri}` "
            "or choose another --name"
        )
    check_cache_writable(preset.base)
    prepare_weights(preset)
    source, check = prepare_data(preset)
    _print_data_warnings(source, check)
    # Ray first: a start that fails (no GPUs in the cluster, say) leaves no study record, so the name stays free
    # for the next `study run` instead of pointing it to a `study resume` that has nothing to resume.
    init_ray(address, preset)
    local.mkdir(parents=True, exist_ok=True)
    print(f"Run directory: {run_uri}", flush=True)
    if store.is_uri(run_uri):
        print(f"Local copy of tables and report: {local}", flush=True)
    record = write_study_record(local, preset, run_uri, source_label(source), check)
    publish(local, run_uri)
    tune_config, run_config = tuner_configs(preset, run_uri, verbose=verbose)
    tuner = tune.Tuner(
        _trainable(preset, run_seal(record)),
        param_space=param_space(preset),
        tune_config=tune_config,
        run_config=run_config,
    )
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C inside Tune: its state is there, `study resume` continues
        raise StudyInterrupted(run_uri) from None
    _raise_if_interrupted(run_uri, grid, preset)
    finish_run(local, grid, preset, write_report=write_report, run_uri=run_uri)
    return local


def _check_run_dir(run_uri: str, local: Path, seal: RunSeal) -> None:
    """Before Ray restores or extends a run: its signed state, and its sealed checkpoints and cache entries."""
    if store.is_uri(run_uri):
        check_remote_signatures(run_uri, trust=seal.trust)
        if seal.key is None and not seal.trust:  # its trials would restore checkpoints no seal vouches for
            raise ConfigError(unsealed_message(run_uri, run_uri))
    else:
        repair_state(local, trust=seal.trust)
        check_sealed(local, seal)


def resume_study(
    run_dir: str | Path, *, address: str | None = None, write_report: bool = True, trust: bool = False
) -> Path:
    """Continue an interrupted study with `Tuner.restore`; finished trials are not run again.

    `run_dir` is the run folder or URI that `study run` printed. Tune's state there is restored only when it
    carries this user's signatures (`study.run.tune_state`), or with `trust` (`--trust-run-dir`). Returns the
    local copy with the results.
    """
    run_uri, local = open_run(run_dir)
    preset, saved = load_study(local, run_uri)
    # The backend the run started on (a run recorded before studies named one: the environment's).
    preset = preset.replace(backend=study_backend(preset.backend, where=f"{run_uri}/study.json: backend"))
    seal = run_seal(saved, trust=trust)
    if not tune.Tuner.can_restore(run_uri):
        raise ConfigError(
            f"{run_uri}: no Ray Tune experiment state to restore (the study stopped before its "
            "first trial started); start it again with `study run`"
        )
    _check_run_dir(run_uri, local, seal)
    check_address(address, preset)
    check_cache_writable(preset.base)
    prepare_weights(preset)
    init_ray(address, preset)
    _quiet_tune_console()  # the restored run config keeps the study's console (verbose=0 + StudyProgress)
    with moved_modules():
        try:
            tuner = tune.Tuner.restore(
                run_uri, trainable=_trainable(preset, seal), resume_unfinished=True, resume_errored=True
            )
        except Exception as exc:  # noqa: BLE001 - tuner.pkl came with the run (signed, or --trust-run-dir)
            raise ConfigError(
                f"{run_uri}/tuner.pkl: Ray Tune could not restore the study from it ({type(exc).__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0][:200]}); start the study again with `study run`"
            ) from None
    with restored_or_stop(run_uri):  # never a fresh experiment in place of a state that did not restore
        grid = tuner.fit()
    _raise_if_interrupted(run_uri, grid, preset)
    looks = read_looks(local, preset)
    if looks:  # the restored experiment is the study's last look
        _finish_look(local, run_uri, grid, preset, saved, looks, write_report)
    else:
        finish_run(local, grid, preset, write_report=write_report, run_uri=run_uri)
    return local


def extend_study(
    run_dir: str | Path,
    seeds: int | None = None,
    *,
    per_look: int | None = None,
    address: str | None = None,
    write_report: bool = True,
    trust: bool = False,
) -> Path:
    """Add seeds to a finished study as one more look (`study.run.extend`): only the new trials run (the new
    seeds, for the baseline and the arms still open), in a new Tune experiment in the run folder; results.csv
    and history.csv gain their rows.

    `seeds`: seeds in all after this look (default: the next look the study declares). `per_look`: reach
    `seeds` in looks of this many seeds each, analysed in turn; it stops early once every primary comparison
    is decided (a study that declares its looks follows them instead). Refused, before any trial starts, for
    a search, a run whose Tune state or seals do not verify, other code or data, too few seeds, declared looks
    exhausted or every primary comparison decided. An interrupted run (or look) is finished first. Returns the
    local copy with the results."""
    run_uri, local = open_run(run_dir)
    preset, saved = load_study(local, run_uri)
    if preset.search is not None:
        raise ConfigError(f"{run_uri}: a search has no seeds to add; `study extend` extends a grid study")
    if per_look is not None and preset.analysis.looks:
        raise ConfigError(
            f"--seeds-per-look: the study declares its looks ({list(preset.analysis.looks)} seeds); extend "
            "it one declared look at a time, without --seeds-per-look"
        )
    preset = preset.replace(backend=study_backend(preset.backend, where=f"{run_uri}/study.json: backend"))
    seal = run_seal(saved, trust=trust)
    _check_run_dir(run_uri, local, seal)
    looks = read_looks(local, preset)
    if not (local / "results.csv").exists() or pending_look(local, preset, looks) is not None:
        print(f"{run_uri} has unfinished trials: finishing them first (as `study resume` would).", flush=True)
        resume_study(run_dir, address=address, write_report=False, trust=trust)
        looks = read_looks(local, preset)
    check_same_code(local, run_uri, preset.backend)
    check_address(address, preset)
    check_cache_writable(preset.base)
    prepare_weights(preset)
    _, check = prepare_data(preset)
    check_same_data(saved, check, run_uri)
    targets = look_targets(preset, looks, seeds, per_look)
    look = plan_look(local, preset, looks, targets[0])
    init_ray(address, preset)
    for k, target in enumerate(targets):
        if k:
            try:
                look = plan_look(local, preset, looks, target)
            except AllDecided as done:
                print(f"Stopped before {target} seeds: {done}", flush=True)
                break
        looks = [*looks, look]
        _run_look(local, run_uri, preset, saved, looks, seal, write_report)
    return local


def _run_look(
    local: Path,
    run_uri: str,
    preset: StudyPreset,
    saved: dict,
    looks: list,
    seal: RunSeal,
    write_report: bool,
) -> None:
    """Record the last of `looks` (signed with Tune's state), run its trials, append their rows."""
    look = looks[-1]
    write_looks(local, looks)
    publish(local, run_uri)
    ran = look_preset(preset, look)
    print(
        f"Look {len(looks) + 1}: seeds {look.seeds[0]}-{look.seeds[-1]} for {len(look.arms)} arms "
        f"({len(ran.trial_configs())} trials); finished trials are kept.",
        flush=True,
    )
    tune_config, run_config = tuner_configs(ran, run_uri)
    tuner = tune.Tuner(
        _trainable(ran, seal), param_space=param_space(ran), tune_config=tune_config, run_config=run_config
    )
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        raise StudyInterrupted(run_uri) from None
    _raise_if_interrupted(run_uri, grid, ran)
    _finish_look(local, run_uri, grid, preset, saved, looks, write_report)


def _finish_look(
    local: Path, run_uri: str, grid: Any, preset: StudyPreset, saved: dict, looks: list, write_report: bool
) -> None:
    """The tables of a look's trials appended (a look already in results.csv: only the report again)."""
    record = manifest_looks(local, preset, saved, looks)
    if pending_look(local, preset, looks) is None:
        if write_report:
            print(f"Report: {write_report_files(local)[1]}")
        publish(local, run_uri)
        return
    finish_run(
        local,
        grid,
        full_preset(preset, looks),
        write_report=write_report,
        run_uri=run_uri,
        look=look_preset(preset, looks[-1]),
        looks=record,
    )
