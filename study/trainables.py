"""The two-stage Ray Tune trainable: pretext phase (cached, shared) then fine-tune phase, with checkpoints.

TensorFlow is imported inside `two_stage_trial` (via `study.train.phases`), never at module import, so the driver
can import this module to build the Tuner without starting TensorFlow.

Inside the trainable only `ray.tune.*` APIs are used (`tune.report`, `tune.get_checkpoint`, `tune.Checkpoint`):
`ray.train.*` calls fail in Tune function trainables on Ray >= 2.50. Tests reach into a running trial through
one hook only (`TEST_HOOK`: a module the trial calls after each epoch), never through code here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

import study
from study.data import load_dataset
from study.data.trial_source import cache_dir, data_source, pretext_root
from study.io import storage as store
from study.io.files import read_json
from study.io.seal import RunSeal
from study.spec import schema
from study.spec.backend import backend_version
from study.spec.config import PRETEXT, TrialConfig, phase_values, regime_name, trial_config_from

# Decoded datasets of this worker process, keyed by where they come from. With `reuse_actors=True` a worker
# runs many trials, and each loads the arrays once.
_DATA: dict[tuple, Any] = {}

STATE_FILE = "trial_state.json"
# Marker object of a complete pretext-cache entry on object storage (see `_cached_pretext_remote`).
REMOTE_COMPLETE = "COMPLETE"


def _training():
    """`study.train.phases`, imported on first use: it imports TensorFlow, which the driver (that imports this
    module to build the Tuner) never starts."""
    from study.train import phases

    return phases


def load_trial_data(trial: TrialConfig):
    """The decoded dataset for `trial`, decoded at most once per process (and once per machine via the cache)."""
    source = data_source(trial)
    key = (repr(source), trial.image_size)
    if key not in _DATA:
        _DATA[key] = load_dataset(source, trial.image_size, cache_dir=cache_dir(trial))
    return _DATA[key]


# Bump when what a pretext phase computes or stores changes (its metrics, references, examples), so that
# cache entries written by older code are not read as current ones.
# 4: entries hold the phase's cost; 5: SSIM from mosaics (equal to rounding); 6: the key holds the backend
PRETEXT_CACHE_FORMAT = 6


def pretext_key(trial: TrialConfig, fingerprint: str, backend: str | None = None) -> str:
    """Hash of everything that determines a pretext phase's weights and metrics: every field tagged
    `config.PRETEXT` (task parameters resolved), the dataset's fingerprint (which covers the `config.DATA`
    fields), the cache format, the code version and the Keras backend with its version (`backend`, default
    this process's `spec.backend.backend_version()`: numbers differ between backends)."""
    ident = {
        "format": PRETEXT_CACHE_FORMAT,
        **phase_values(trial, PRETEXT, keys=True),
        "data": fingerprint,
        "version": study.__version__,
        "backend": backend or backend_version(),
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
    trial: TrialConfig, data: Any, on_epoch=None, *, train=None, load=None, seal: RunSeal = RunSeal()
) -> tuple[Any, bool, str]:
    """(PretextResult, reused?, key): load the pretext phase from the shared cache or train and store it.

    A file lock per key makes concurrent trials that need the same pretext train it once: the second waits
    and then loads. Entries are written to a temporary folder and renamed, so a crash never leaves a
    half-written entry that looks complete. A `pretext_cache_dir` URI (`s3://...`) keeps the cache on object
    storage, shared by a cluster's nodes (`_cached_pretext_remote`). `train` / `load` default to `training.run_pretext` /
    `training.PretextResult.load` (replaceable so the locking can be tested without TensorFlow). Entries are
    sealed with the run's key (`seal`) when written and checked before they are loaded.
    """
    from filelock import FileLock

    if train is None or load is None:
        training = _training()
        train, load = train or training.run_pretext, load or training.PretextResult.load
    load = _checked_load(load, seal)
    key = pretext_key(trial, data.fingerprint)
    if not trial.share_pretext:
        return train(trial, data, on_epoch=on_epoch), False, key
    root = pretext_root(trial, _experiment_location)
    if store.is_uri(root):
        return _cached_pretext_remote(trial, data, on_epoch, train, load, key, store.join(root, key), seal)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    if entry.is_dir():
        return load(entry), True, key
    with FileLock(str(root / f"{key}.lock")):
        if entry.is_dir():
            return load(entry), True, key
        result = train(trial, data, on_epoch=on_epoch)
        tmp = _save_entry(result, root, key, trial, seal)
        os.replace(tmp, entry)
        return result, False, key


def _save_entry(result: Any, root: Path, key: str, trial: TrialConfig, seal: RunSeal) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
    result.save(tmp)
    (tmp / "key.json").write_text(json.dumps({"key": key, "task": trial.task, "seed": trial.seed}))
    seal.seal(tmp)
    return tmp


def _checked_load(load, seal: RunSeal):
    """`load`, preceded by the check of the entry's seal (a planted or edited entry is refused by name)."""

    def checked(entry: Path) -> Any:
        seal.check(Path(entry), f"pretext-cache entry {entry}")
        return load(entry)

    return checked


def _cached_pretext_remote(
    trial, data, on_epoch, train, load, key: str, entry: str, seal: RunSeal = RunSeal()
) -> tuple[Any, bool, str]:
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
        tmp = _save_entry(result, local_root, key, trial, seal)
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


def _report_with_state(
    metrics: dict[str, Any], state: dict[str, Any], write_files=None, seal: RunSeal = RunSeal()
) -> None:
    """`tune.report` with a checkpoint holding `state` (json) and whatever `write_files(dir)` writes, sealed
    with the run's key."""
    with tempfile.TemporaryDirectory(prefix="study-ckpt-") as tmp:
        if write_files is not None:
            write_files(Path(tmp))
        (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
        seal.seal(Path(tmp))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restore_checkpoint(seal: RunSeal = RunSeal()) -> tuple[dict[str, Any], Path | None]:
    """(state, local copy of the checkpoint dir) from `tune.get_checkpoint()`, or ({}, None); the copy is
    checked against the seal its writer put on it before anything in it is read."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {}, None
    local = Path(tempfile.mkdtemp(prefix="study-restore-"))
    try:
        with checkpoint.as_directory() as d:
            # Links are copied as links, never followed (a link to /dev/zero would copy forever); the
            # bounded reader then refuses them, and a FIFO, as it refuses anything but a regular file.
            shutil.copytree(d, local, dirs_exist_ok=True, symlinks=True)
        seal.check(local, f"checkpoint {checkpoint.path}")
        return read_json(local / STATE_FILE), local
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise


def _pretext_fields(result: Any, reused: bool, key: str) -> dict[str, Any]:
    """The results columns of a pretext phase: its metrics, its cost (that of the phase that trained the
    weights, also when this trial reused them from the cache) and how this trial got it."""
    fields = {f"pretext_{k}": v for k, v in result.metrics.items()}
    fields.update({f"pretext_{k}": result.cost[k] for k in schema.PRETEXT_COST_FIELDS if k in result.cost})
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


def two_stage_trial(config: dict[str, Any], run_seal: RunSeal | None = None) -> None:
    """One trial: pretext phase (unless `task == "none"`), then fine-tune with early-stopping replay.

    Reports per epoch (`phase` = "pretext" or "finetune") and a last result with `phase` = "done" holding
    `regimes` (per early-stopping regime: stop epoch and test metrics), pretext metrics and the status.
    Resumes from `tune.get_checkpoint()`: after the pretext phase, or from the last fine-tune epoch saved;
    `restored` in every result says whether this attempt started from a checkpoint. `run_seal` (the run's
    key, from the driver through `tune.with_parameters`) seals what the trial writes and checks what it reads
    back; without it nothing is sealed or checked (a Tuner built without the study's driver).
    """
    trial = trial_config_from(config)
    seal = run_seal or RunSeal()
    # TensorFlow 2.21's C++ logging prints spurious errors every epoch (tf.data attribute notices); Python
    # exceptions still carry real errors. Set TF_CPP_MIN_LOG_LEVEL yourself to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Ray Train logs "Checkpoint successfully created at ..." at INFO for every epoch of every trial (the
    # study's console reports trials, not checkpoints); its warnings and errors still show.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _ExpectedRetracing) for f in tf_logger.filters):
        tf_logger.addFilter(_ExpectedRetracing())
    training = _training()
    training.configure(trial.threads)
    data = load_trial_data(trial)
    state, restored = _restore_checkpoint(seal)
    try:
        _run_phases(trial, data, state, restored, seal)
    finally:
        if restored is not None:
            shutil.rmtree(restored, ignore_errors=True)


def _run_phases(
    trial: TrialConfig, data: Any, state: dict[str, Any], restored: Path | None, seal: RunSeal
) -> None:
    import ray

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
        result, pretext_info = _pretext_phase(trial, data, state, restored, common, seal)
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
    _finetune_phase(trial, data, state, restored, common, pretext_info, encoder_weights, seal)


def _pretext_phase(
    trial: TrialConfig,
    data: Any,
    state: dict[str, Any],
    restored: Path | None,
    common: dict[str, Any],
    seal: RunSeal,
) -> tuple[Any, dict[str, Any]]:
    """(PretextResult, its results fields): from the checkpoint, else from the cache or trained (reported
    per epoch, then checkpointed)."""
    training = _training()
    if state.get("phase") == "pretext_done":
        return training.PretextResult.load(restored / "pretext"), state.get("pretext", {})

    def on_pretext_epoch(epoch: int, logs: dict[str, Any]) -> None:
        tune.report(
            {"phase": "pretext", "epoch": epoch, "finetune_epoch": 0, "search_score": 0.0, **common, **logs}
        )
        _test_event("pretext", epoch=epoch, task=trial.task, node_id=common["node_id"])

    result, reused, key = cached_pretext(trial, data, on_epoch=on_pretext_epoch, seal=seal)
    pretext_info = _pretext_fields(result, reused, key)
    _report_with_state(
        {"phase": "pretext_done", "finetune_epoch": 0, "search_score": 0.0, **common, **pretext_info},
        {"phase": "pretext_done", "pretext": pretext_info},
        write_files=lambda d: result.save(d / "pretext"),
        seal=seal,
    )
    return result, pretext_info


def _finetune_phase(
    trial: TrialConfig,
    data: Any,
    state: dict[str, Any],
    restored: Path | None,
    common: dict[str, Any],
    pretext_info: dict[str, Any],
    encoder_weights: Any,
    seal: RunSeal,
) -> None:
    """The fine-tune phase (resumed from the checkpoint's epoch), reported per epoch, then the final result."""
    training = _training()
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
                seal=seal,
            )
        elif reports_after(trial, epoch):
            tune.report(metrics)
        _test_event("finetune", epoch=epoch, task=trial.task, node_id=common["node_id"])

    result = training.run_finetune(
        trial,
        data,
        encoder_weights=encoder_weights,
        on_epoch=on_finetune_epoch,
        resume_dir=resume_dir,
        callbacks=_early_stopping(trial),
    )
    resumed = int(state.get("epoch", 0)) if state.get("phase") == "finetune" else 0
    tune.report(_final_result(result, ran_on, resumed, common, pretext_info, trial))


def _early_stopping(trial: TrialConfig) -> list[Any]:
    """Keras' EarlyStopping for a trial that stops training early (`early_stop_training`), else none."""
    if not trial.early_stop_training:
        return []
    import keras

    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=trial.patiences[0], start_from_epoch=trial.start_from_epoch
        )
    ]


def _final_result(
    result: Any,
    ran_on: list[list[Any]],
    resumed: int,
    common: dict[str, Any],
    pretext_info: dict[str, Any],
    trial: TrialConfig,
) -> dict[str, Any]:
    """The trial's last result (`phase` = "done"): regimes, every epoch's logs, probe, provenance, pretext."""
    first = result.regimes.get(regime_name(trial.patiences[0]), {})
    used = first.get("epoch_used")
    score = result.history[used - 1].get("val_auc", float("nan")) if used else float("nan")
    return {
        # A diverged or unscorable trial scores 0 so that Optuna ranks it last instead of failing it.
        "search_score": score if score == score else 0.0,
        "finetune_epoch": len(result.history),
        "phase": "done",
        "status": "diverged" if result.diverged else "ok",
        "diverged_phase": "finetune" if result.diverged else None,
        "diverged_epoch": result.diverged_epoch,
        "finetune_epochs_run": len(result.history),
        "finetune_epochs_resumed": resumed,
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


#: Test-only hook: the name of a module, importable by the trial's worker process (Ray workers inherit the
#: driver's environment, PYTHONPATH included), whose `on_event(phase, *, epoch, task, node_id)` the trial
#: calls after each pretext epoch's report (`phase` "pretext") and each fine-tune epoch's ("finetune"). It may
#: raise (a failing trial), sleep or pause. Unset in normal use; the tests' module is tests/support/faults.py.
TEST_HOOK = "STUDY_TEST_HOOK"


def _test_event(phase: str, **info: Any) -> None:
    module = os.environ.get(TEST_HOOK)
    if module:
        importlib.import_module(module).on_event(phase, **info)
