"""What the phases hand over: `PretextResult` (saved and loaded with the pretext cache), `FinetuneResult`,
`PretextRun` (what the pretext phase hands a task's own step), and the flat `.npz` array files of weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from study.io.files import read_json
from study.spec.config import TrialConfig

EpochLogs = dict[str, Any]


@dataclass
class PretextResult:
    """Outcome of a pretext phase.

    `encoder_weights`: `encoder.get_weights()` after training (best validation epoch when
    `pretext_patience` is set), `[]` when diverged. `metrics`: test-set metrics beside their learning-free
    references and the `learned` verdict (`study.tasks.references.pretext_scores`; floats, plus the str
    `headline` and `ref_name` and the bools `learned`, `beats_classical`), `{}` when diverged. `history`:
    per epoch `{"epoch" (1-based), "loss", "val_loss"}`. `examples`: for the `image` head, uint8
    `(4, S, S, 3)` arrays `inputs` (corrupted), `targets` (originals), `outputs` (reconstructions); for the
    `angle` and `rotation4` heads `inputs` (rotated) and float `(4,)` `angle_true_deg`, `angle_pred_deg`.
    `stopped_epoch`: epoch at which early stopping ended the phase, else None.
    `cost`: what the phase cost (`run_pretext` fills it): `seconds` (wall, the whole phase including model
    build and test scoring), `device` ("CPU" or the GPU's name), `devices` (CPU threads or GPUs used),
    `images_seen` (training images drawn: epochs run x training images; a two-view task sees each as two
    views), `flops` (estimated training FLOPs: `models.forward_flops` of the trained model x
    `models.TRAIN_FLOPS_FACTOR` per training input, plus forward-only passes such as BYOL's target network;
    validation and test scoring left out); `{}` in results saved before costs were recorded.
    """

    task: str
    encoder_weights: list[np.ndarray]
    metrics: dict[str, float]
    history: list[EpochLogs]
    diverged: bool = False
    diverged_epoch: int | None = None
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    stopped_epoch: int | None = None
    cost: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> None:
        """Write `encoder_weights.npz`, `examples.npz` and `pretext.json` into `directory` (created)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_arrays(d / "encoder_weights.npz", self.encoder_weights)
        np.savez(d / "examples.npz", **self.examples)
        meta = {
            "task": self.task,
            "metrics": self.metrics,
            "history": self.history,
            "diverged": self.diverged,
            "diverged_epoch": self.diverged_epoch,
            "stopped_epoch": self.stopped_epoch,
            "cost": self.cost,
            "n_weights": len(self.encoder_weights),
        }
        (d / "pretext.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> PretextResult:
        d = Path(directory)
        if not (d / "pretext.json").is_file():
            raise FileNotFoundError(f"{d} holds no saved pretext result (pretext.json missing)")
        meta = read_json(d / "pretext.json")  # bounded: a cache entry is a file anyone could have written
        weights = load_arrays(d / "encoder_weights.npz")
        if len(weights) != meta["n_weights"]:
            raise ValueError(
                f"{d}: encoder_weights.npz holds {len(weights)} arrays, pretext.json says {meta['n_weights']}"
            )
        with np.load(d / "examples.npz") as z:
            examples = {k: z[k] for k in z.files}
        return cls(
            task=meta["task"],
            encoder_weights=weights,
            metrics=meta["metrics"],
            history=meta["history"],
            diverged=meta["diverged"],
            diverged_epoch=meta["diverged_epoch"],
            examples=examples,
            stopped_epoch=meta["stopped_epoch"],
            cost=meta.get("cost", {}),
        )


@dataclass
class FinetuneResult:
    """Outcome of a fine-tune phase.

    `history`: per completed epoch `{"epoch" (1-based), "loss", "val_loss", "val_<metric>"...,
    "test_<metric>"...}` with the metrics of `study.train.metrics.classification_metrics`; `val_loss` is
    Keras' binary cross-entropy on the validation images (what `EarlyStopping(monitor="val_loss")` would
    see).
    `regimes`: per `regime_name(patience)`: `patience`, `stop_epoch`, `best_epoch`, `epoch_used`,
    `diverged`, `val_loss` and `test_<metric>` at `epoch_used` (see `finetune_phase.run_finetune`).
    `model_weights`: full classifier weights after the last completed epoch.
    `train_index` / `val_index`: rows of `data.train` used for training / validation.
    `timings`: per epoch run by this call, `{"epoch", "fit_s", "eval_s"}` wall seconds of training and of
    the validation + test evaluation (kept out of `history` so histories stay comparable bit for bit).
    `probe`: the linear probe of the encoder the fine-tune started from (`study.train.probe.linear_probe`:
    `probe_auc`, `probe_val_auc`, `probe_c`, and `probe_s`, its wall seconds).
    """

    history: list[EpochLogs]
    regimes: dict[str, dict[str, Any]]
    diverged: bool
    diverged_epoch: int | None
    model_weights: list[np.ndarray]
    train_index: np.ndarray
    val_index: np.ndarray
    timings: list[dict[str, float]] = field(default_factory=list)
    probe: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PretextRun:
    """What `run_pretext` hands a task's training step (`PretextTask.train` or a declared step's
    implementation; `study.tasks.registry` docstring).

    `params`: the task's resolved parameters. `encoder`: the trial's encoder, built after Python, NumPy and
    Keras were reseeded from `trial.seed` and initialised as `trial.weights` says; train it in place.
    `train_images`, `val_images`: uint8 `(N, S, S, 3)`, `data.train` split by `validation_split` (the
    validation images every arm of this seed holds out); `test_images`: `data.test`'s. `on_epoch(epoch,
    logs)`: call after each completed epoch (1-based) with `{"epoch", "loss", "val_loss"}`; None: no one
    listens.
    """

    trial: TrialConfig
    params: dict[str, Any]
    encoder: keras.Model
    train_images: np.ndarray
    val_images: np.ndarray
    test_images: np.ndarray
    on_epoch: Callable[[int, EpochLogs], None] | None = None


def save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    """`arrays` into the `.npz` file `path`, atomically (a temporary file, renamed): one flat member per
    dtype and a `layout` member (JSON: each array's dtype and shape), because a zip member per array costs
    ~70 us (10 ms per checkpoint of the demo's model, 4 checkpoints per trial). `load_arrays` reads it."""
    arrays = [np.asarray(a) for a in arrays]
    dtypes = list(dict.fromkeys(a.dtype.str for a in arrays))
    members = {
        f"flat{i}": np.concatenate([a.reshape(-1) for a in arrays if a.dtype.str == dtype])
        for i, dtype in enumerate(dtypes)
    }
    members["layout"] = np.array(json.dumps([[a.dtype.str, list(a.shape)] for a in arrays]))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **members)
    os.replace(tmp, path)


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays `save_arrays` wrote, in order; also a file of one member per array (`a0000`, `a0001`,
    ...), as checkpoints were written before."""
    with np.load(path, allow_pickle=False) as z:
        if "layout" not in z.files:
            return [z[name] for name in sorted(z.files)]
        layout = json.loads(str(z["layout"]))
        flats = {dtype: z[f"flat{i}"] for i, dtype in enumerate(dict.fromkeys(d for d, _ in layout))}
    offsets = dict.fromkeys(flats, 0)
    out = []
    for dtype, shape in layout:
        start, n = offsets[dtype], int(np.prod(shape, dtype=np.int64))
        out.append(flats[dtype][start : start + n].reshape(shape))
        offsets[dtype] = start + n
    return out
