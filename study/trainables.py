"""The two-stage Ray Tune trainable: pretext phase (cached, shared) then fine-tune phase, with checkpoints.

TensorFlow is imported inside `two_stage_trial` (via `study.train.phases`), never at module import, so the driver
can import this module to build the Tuner without starting TensorFlow.

Inside the trainable only `ray.tune.*` APIs are used (`tune.report`, `tune.get_checkpoint`, `tune.Checkpoint`):
`ray.train.*` calls fail in Tune function trainables on Ray >= 2.50.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

import study
from study.io import storage as store
from study.spec.config import PRETEXT, TrialConfig, phase_values, regime_name
from study.data.trial_source import cache_dir, data_source, pretext_root

# Decoded datasets of this worker process, keyed by where they come from. With `reuse_actors=True` a worker
# runs many trials, and each loads the arrays once.
_DATA: dict[tuple, Any] = {}

STATE_FILE = "trial_state.json"
# Marker object of a complete pretext-cache entry on object storage (see `_cached_pretext_remote`).
REMOTE_COMPLETE = "COMPLETE"


# Grid dimensions whose values are dicts of TrialConfig fields (search_spaces.StudyPreset.param_space).
GRID_TABLES = ("arm", "subset")


def trial_config_from(config: dict[str, Any]) -> TrialConfig:
    """Flatten a Tune config (fixed settings + `arm` / `subset` dicts, or flat search suggestions)."""
    flat = {k: v for k, v in config.items() if k not in GRID_TABLES}
    for table in GRID_TABLES:
        flat.update(config.get(table) or {})
    return TrialConfig.from_dict(flat)


def load_trial_data(trial: TrialConfig):
    """The decoded dataset for `trial`, decoded at most once per process (and once per machine via the cache)."""
    from study.data.dataset import load_dataset

    source = data_source(trial)
    key = (repr(source), trial.image_size)
    if key not in _DATA:
        _DATA[key] = load_dataset(source, trial.image_size, cache_dir=cache_dir(trial))
    return _DATA[key]


# Bump when what a pretext phase computes or stores changes (its metrics, references, examples), so that
# cache entries written by older code are not read as current ones.
PRETEXT_CACHE_FORMAT = 5  # 4: entries hold the phase's cost; 5: SSIM from mosaics (equal to rounding)


def pretext_key(trial: TrialConfig, fingerprint: str) -> str:
    """Hash of everything that determines a pretext phase's weights and metrics: every field tagged
    `config.PRETEXT` (task parameters resolved), the dataset's fingerprint (which covers the `config.DATA`
    fields), the cache format and the code version."""
    ident = {
        "format": PRETEXT_CACHE_FORMAT,
        **phase_values(trial, PRETEXT, keys=True),
        "data": fingerprint,
        "version": study.__version__,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _experiment_location() -> str:
    """The folder or URI of the Tune experiment (= study run) the calling trial belongs to."""
    import pyarrow.fs as pafs

    storage = tune.get_context().get_storage()
    if isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
        return storage.experiment_fs_path
    return f"{storage.storage_filesystem.type_name}://{storage.experiment_fs_path}"


def cached_pretext(
    trial: TrialConfig, data: Any, on_epoch=None, *, train=None, load=None
) -> tuple[Any, bool, str]:
    """(PretextResult, reused?, key): load the pretext phase from the shared cache or train and store it.

    A file lock per key makes concurrent trials that need the same pretext train it once: the second waits
    and then loads. Entries are written to a temporary folder and renamed, so a crash never leaves a
    half-written entry that looks complete. A `pretext_cache_dir` URI (`s3://...`) keeps the cache on object
    storage, shared by a cluster's nodes (`_cached_pretext_remote`). `train` / `load` default to `training.run_pretext` /
    `training.PretextResult.load` (replaceable so the locking can be tested without TensorFlow).
    """
    from filelock import FileLock

    if train is None or load is None:
        from study.train.phases import PretextResult, run_pretext

        train, load = train or run_pretext, load or PretextResult.load
    key = pretext_key(trial, data.fingerprint)
    if not trial.share_pretext:
        return train(trial, data, on_epoch=on_epoch), False, key
    root = pretext_root(trial, _experiment_location)
    if store.is_uri(root):
        return _cached_pretext_remote(trial, data, on_epoch, train, load, key, store.join(root, key))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    if entry.is_dir():
        return load(entry), True, key
    with FileLock(str(root / f"{key}.lock")):
        if entry.is_dir():
            return load(entry), True, key
        result = train(trial, data, on_epoch=on_epoch)
        tmp = _save_entry(result, root, key, trial)
        os.replace(tmp, entry)
        return result, False, key


def _save_entry(result: Any, root: Path, key: str, trial: TrialConfig) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
    result.save(tmp)
    (tmp / "key.json").write_text(json.dumps({"key": key, "task": trial.task, "seed": trial.seed}))
    return tmp


def _cached_pretext_remote(trial, data, on_epoch, train, load, key: str, entry: str) -> tuple[Any, bool, str]:
    """The cache on object storage (`s3://...`): shared by every node of a cluster.

    Object stores have neither locks nor atomic folder renames, so an entry counts as complete once its
    marker object exists, uploaded after everything else. A node-local file lock makes trials on one node
    train a key once; two nodes that miss at the same moment both train it, to the same weights (training is
    deterministic per key), and the later upload rewrites identical files.
    """
    from filelock import FileLock

    local_root = cache_dir(trial) / "pretext-remote" / hashlib.sha256(entry.encode()).hexdigest()[:12]
    local_root.mkdir(parents=True, exist_ok=True)
    local_entry = local_root / key
    marker = store.join(entry, REMOTE_COMPLETE)
    with FileLock(str(local_root / f"{key}.lock")):
        if local_entry.is_dir() or store.exists(marker):
            if not local_entry.is_dir():
                tmp = Path(tempfile.mkdtemp(prefix=f"{key}.dl-", dir=local_root))
                store.download(entry, tmp)
                os.replace(tmp, local_entry)
            return load(local_entry), True, key
        result = train(trial, data, on_epoch=on_epoch)
        tmp = _save_entry(result, local_root, key, trial)
        store.upload(tmp, entry)
        store.write_text(marker, json.dumps({"key": key}))
        os.replace(tmp, local_entry)
        return result, False, key


def checkpoints_after(trial: TrialConfig, epoch: int) -> bool:
    """Whether the report of fine-tune epoch `epoch` (1-based) carries a checkpoint: every
    `trial.checkpoint_every` epochs and after the last, so a retried or resumed trial redoes at most
    `checkpoint_every` fine-tune epochs (the other epochs are reported without one)."""
    return epoch % trial.checkpoint_every == 0 or epoch == trial.finetune_epochs


def reports_after(trial: TrialConfig, epoch: int) -> bool:
    """Whether fine-tune epoch `epoch` (1-based) is reported as an intermediate result: every
    `trial.report_every` epochs, with every checkpoint and after the last. Each report is a round trip to
    Tune's driver (~10 ms with the trial waiting, and the driver's work of logging it), so the demo reports
    with its checkpoints; the final result holds every epoch's logs either way (`finetune_history`)."""
    return epoch % trial.report_every == 0 or checkpoints_after(trial, epoch)


def _report_with_state(metrics: dict[str, Any], state: dict[str, Any], write_files=None) -> None:
    """`tune.report` with a checkpoint holding `state` (json) and whatever `write_files(dir)` writes."""
    with tempfile.TemporaryDirectory(prefix="study-ckpt-") as tmp:
        if write_files is not None:
            write_files(Path(tmp))
        (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restore_checkpoint() -> tuple[dict[str, Any], Path | None]:
    """(state, local copy of the checkpoint dir) from `tune.get_checkpoint()`, or ({}, None)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {}, None
    local = Path(tempfile.mkdtemp(prefix="study-restore-"))
    with checkpoint.as_directory() as d:
        shutil.copytree(d, local, dirs_exist_ok=True)
    return json.loads((local / STATE_FILE).read_text()), local


# The pretext phase's cost (`training.PretextResult.cost`) as results columns `pretext_<name>`.
PRETEXT_COST_FIELDS = ("seconds", "device", "devices", "images_seen", "flops")


def _pretext_fields(result: Any, reused: bool, key: str) -> dict[str, Any]:
    """The results columns of a pretext phase: its metrics, its cost (that of the phase that trained the
    weights, also when this trial reused them from the cache) and how this trial got it."""
    fields = {f"pretext_{k}": v for k, v in result.metrics.items()}
    fields.update({f"pretext_{k}": result.cost[k] for k in PRETEXT_COST_FIELDS if k in result.cost})
    fields.update(
        pretext_cached=reused,
        pretext_key=key,
        pretext_diverged=bool(result.diverged),
        pretext_epochs_run=0 if reused else len(result.history),
    )
    return fields


class _ExpectedRetracing(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function ...> triggered tf.function retracing"
    warning. A kept model's predict function is traced once per batch shape, and each evaluation set ends
    in a partial batch of its own size, so a worker that runs many trials meets a few shapes per model:
    expected, bounded, and not something a user can act on. Every other TensorFlow warning still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def two_stage_trial(config: dict[str, Any]) -> None:
    """One trial: pretext phase (unless `task == "none"`), then fine-tune with early-stopping replay.

    Reports per epoch (`phase` = "pretext" or "finetune") and a last result with `phase` = "done" holding
    `regimes` (per early-stopping regime: stop epoch and test metrics), pretext metrics and the status.
    Resumes from `tune.get_checkpoint()`: after the pretext phase, or from the last fine-tune epoch saved;
    `restored` in every result says whether this attempt started from a checkpoint.
    """
    trial = trial_config_from(config)
    # TensorFlow 2.21's C++ logging prints spurious errors every epoch (tf.data attribute notices); Python
    # exceptions still carry real errors. Set TF_CPP_MIN_LOG_LEVEL yourself to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Ray Train logs "Checkpoint successfully created at ..." at INFO for every epoch of every trial (the
    # study's console reports trials, not checkpoints); its warnings and errors still show.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _ExpectedRetracing) for f in tf_logger.filters):
        tf_logger.addFilter(_ExpectedRetracing())
    from study.train import phases as training

    training.configure_tensorflow(trial.threads)
    data = load_trial_data(trial)
    state, restored = _restore_checkpoint()
    try:
        _run_phases(trial, data, state, restored)
    finally:
        if restored is not None:
            shutil.rmtree(restored, ignore_errors=True)


def _run_phases(trial: TrialConfig, data: Any, state: dict[str, Any], restored: Path | None) -> None:
    import ray

    from study.train import phases as training

    # Provenance: which worker process and which cluster node ran this attempt.
    common = {
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "data_fingerprint": data.fingerprint,
        "restored": restored is not None,
    }
    pretext_info: dict[str, Any] = state.get("pretext", {})
    encoder_weights = None
    if trial.task != "none" and state.get("phase") != "finetune":
        if state.get("phase") == "pretext_done":
            result = training.PretextResult.load(restored / "pretext")
        else:

            def on_pretext_epoch(epoch: int, logs: dict[str, Any]) -> None:
                tune.report(
                    {
                        "phase": "pretext",
                        "epoch": epoch,
                        "finetune_epoch": 0,
                        "search_score": 0.0,
                        **common,
                        **logs,
                    }
                )
                _maybe_inject_fault("pretext", epoch, trial.task)
                _maybe_delay("pretext")

            result, reused, key = cached_pretext(trial, data, on_epoch=on_pretext_epoch)
            pretext_info = _pretext_fields(result, reused, key)
            _report_with_state(
                {"phase": "pretext_done", "finetune_epoch": 0, "search_score": 0.0, **common, **pretext_info},
                {"phase": "pretext_done", "pretext": pretext_info},
                write_files=lambda d: result.save(d / "pretext"),
            )
        if result.diverged:
            tune.report(
                {
                    "phase": "done",
                    "status": "diverged",
                    "diverged_phase": "pretext",
                    "search_score": 0.0,
                    "finetune_epoch": 0,
                    "diverged_epoch": result.diverged_epoch,
                    "regimes": {},
                    **common,
                    **pretext_info,
                }
            )
            return
        encoder_weights = result.encoder_weights

    resume_dir = restored / "finetune" if state.get("phase") == "finetune" else None
    # Where each fine-tune epoch ran ([pid, node id]; the epochs kept by a checkpoint ran on earlier attempts,
    # unknown for a checkpoint written before this was recorded).
    kept = int(state.get("epoch", 0)) if resume_dir is not None else 0
    ran_on: list[list[Any]] = list(state.get("ran_on") or [[None, None]] * kept)[:kept]

    def on_finetune_epoch(epoch: int, logs: dict[str, Any], save_state) -> None:
        # `finetune_epoch` / `search_score` serve ASHA and Optuna (validation AUC only, never a test metric).
        metrics = {
            "phase": "finetune",
            "epoch": epoch,
            "finetune_epoch": epoch,
            "search_score": logs.get("val_auc", float("nan")),
            **common,
            **logs,
        }
        ran_on.append([common["pid"], common["node_id"]])  # epochs come in order, after the kept ones
        if checkpoints_after(trial, epoch):
            _report_with_state(
                metrics,
                {"phase": "finetune", "epoch": epoch, "pretext": pretext_info, "ran_on": ran_on},
                write_files=lambda d: save_state(d / "finetune"),
            )
        elif reports_after(trial, epoch):
            tune.report(metrics)
        _maybe_inject_fault("finetune", epoch, trial.task)
        _maybe_pause("finetune", epoch, common["node_id"])
        _maybe_delay("finetune")

    callbacks = []
    if trial.early_stop_training:
        import keras

        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=trial.patiences[0], start_from_epoch=trial.start_from_epoch
            )
        )
    result = training.run_finetune(
        trial,
        data,
        encoder_weights=encoder_weights,
        on_epoch=on_finetune_epoch,
        resume_dir=resume_dir,
        callbacks=callbacks,
    )
    first = result.regimes.get(regime_name(trial.patiences[0]), {})
    used = first.get("epoch_used")
    score = result.history[used - 1].get("val_auc", float("nan")) if used else float("nan")
    tune.report(
        {
            # A diverged or unscorable trial scores 0 so that Optuna ranks it last instead of failing it.
            "search_score": score if score == score else 0.0,
            "finetune_epoch": len(result.history),
            "phase": "done",
            "status": "diverged" if result.diverged else "ok",
            "diverged_phase": "finetune" if result.diverged else None,
            "diverged_epoch": result.diverged_epoch,
            "finetune_epochs_run": len(result.history),
            "finetune_epochs_resumed": int(state.get("epoch", 0)) if state.get("phase") == "finetune" else 0,
            "regimes": result.regimes,
            # Every epoch's logs, also those not reported on their own (`reports_after`): the run's history.
            # A JSON string: a list would reach TensorBoard's logger, which warns about it.
            "finetune_history": json.dumps(
                [
                    {**logs, "pid": pid, "node_id": node}
                    for logs, (pid, node) in zip(result.history, ran_on, strict=True)
                ]
            ),
            **result.probe,
            **common,
            **pretext_info,
        }
    )


class InjectedFault(RuntimeError):
    """Raised by the fault-injection test hook (`STUDY_INJECT_FAULT`, see `_maybe_inject_fault`)."""


def _maybe_inject_fault(phase: str, epoch: int, task: str) -> None:
    """Test hook: `STUDY_INJECT_FAULT="PHASE:EPOCH[:TASK[:always]][,...]"` fails a trial right after that epoch.

    `finetune:2` fails every trial once after fine-tune epoch 2 (a marker file in the trial directory makes
    it fire once), so tests can prove a retry resumes from the last checkpoint; `pretext:1:rotation:always`
    fails the rotation trials on every attempt (a retry repeats the unfinished pretext phase), so tests can
    prove a persistently failing trial is recorded as errored while the study completes. Comma-separated
    specs apply together. Unset in normal use.
    """
    for spec in filter(None, os.environ.get("STUDY_INJECT_FAULT", "").split(",")):
        parts = spec.split(":")
        if parts[:2] != [phase, str(epoch)] or (len(parts) > 2 and parts[2] not in ("*", task)):
            continue
        marker = Path(tune.get_context().get_trial_dir()) / ".fault-injected"
        if marker.exists() and parts[3:] != ["always"]:
            continue
        marker.write_text(spec)
        raise InjectedFault(f"injected fault after {phase} epoch {epoch} (STUDY_INJECT_FAULT={spec})")


def _maybe_delay(phase: str) -> None:
    """Test hook: `STUDY_TEST_EPOCH_DELAY="PHASE:SECONDS[,PHASE:SECONDS]"` sleeps after each reported epoch of
    that phase, so that a test interrupting a study at a phase finds it there (the smoke study's epochs take
    a few hundredths of a second). Unset in normal use."""
    for item in filter(None, os.environ.get("STUDY_TEST_EPOCH_DELAY", "").split(",")):
        want, seconds = item.split(":")
        if want == phase:
            time.sleep(float(seconds))


def _maybe_pause(phase: str, epoch: int, node_id: str) -> None:
    """Test hook: `STUDY_TEST_PAUSE="PHASE:EPOCH:DIR"` makes the first trial that completes (and checkpoints)
    that epoch write `DIR/paused.json` (its trial id and node) and sleep, so that a test can remove its node at
    a known moment. Off while DIR does not exist; unset in normal use."""
    spec = os.environ.get("STUDY_TEST_PAUSE")
    if not spec:
        return
    want_phase, want_epoch, folder = spec.split(":", 2)
    if (want_phase, want_epoch) != (phase, str(epoch)):
        return
    try:
        fd = os.open(Path(folder) / "paused.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except (FileExistsError, FileNotFoundError):
        return  # another trial paused already, or the test did not create DIR (pausing is off)
    trial_id = tune.get_context().get_trial_id()
    with os.fdopen(fd, "w") as f:
        json.dump({"trial_id": trial_id, "node_id": node_id, "epoch": epoch}, f)
    time.sleep(120)
