"""The fine-tune phase's resumable state: weights, optimizer state, history and probe in a folder, written
after an epoch (`save_state`) and read back by a resumed run (`load_state`), which refuses a state saved with
other settings or data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from study.io.files import read_json
from study.spec.config import FINETUNE, PRETEXT, TrialConfig, phase_values
from study.train.results import EpochLogs, load_arrays, save_arrays

STATE_JSON = "state.json"
#: `save_state` bound to a phase's model and history: writes the state into the folder it is given.
SaveState = Callable[[str | os.PathLike], None]

# What must match between a saved fine-tune state and the run resuming from it: every field that changes
# the fine-tune's numbers, directly or through the pretext it starts from (`config` phase tags).
_RESUME_PHASES = (PRETEXT, FINETUNE)


def save_state(
    model: keras.Model,
    d: Path,
    trial: TrialConfig,
    data: Any,
    history: list[EpochLogs],
    probe_scores: dict[str, float],
) -> None:
    """Write `weights.npz`, `optimizer.npz` and `state.json` (last, so a present json means complete)."""
    d.mkdir(parents=True, exist_ok=True)
    save_arrays(d / "weights.npz", model.get_weights())
    save_arrays(d / "optimizer.npz", [v.numpy() for v in model.optimizer.variables])
    state = {
        "epoch": len(history),
        "history": history,
        "probe": probe_scores,
        "fingerprint": _fingerprint(data),
        "config": phase_values(trial, *_RESUME_PHASES),
    }
    tmp = d / (STATE_JSON + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, d / STATE_JSON)


def load_state(
    model: keras.Model, d: Path, trial: TrialConfig, data: Any
) -> tuple[list[EpochLogs], dict[str, float]]:
    """Restore weights and optimizer state from `d`; returns the history and probe saved with them."""
    if not (d / STATE_JSON).is_file():
        raise FileNotFoundError(f"resume_dir={str(d)!r} holds no fine-tune state ({STATE_JSON} missing)")
    state = read_json(d / STATE_JSON)
    now = phase_values(trial, *_RESUME_PHASES)
    # A state written before a field was compared lacks it: compared on the fields it holds.
    changed = sorted(k for k in now if k in state["config"] and state["config"][k] != now[k])
    if changed:
        saved = {k: state["config"].get(k) for k in changed}
        raise ValueError(
            f"resume_dir={str(d)!r} was saved with different {changed} ({saved} vs "
            f"{ {k: now[k] for k in changed} }); resume with the trial config that wrote it"
        )
    if state["fingerprint"] != _fingerprint(data):
        raise ValueError(
            f"resume_dir={str(d)!r} was saved for dataset {state['fingerprint']!r}, "
            f"not {_fingerprint(data)!r}; resume on the same data"
        )
    model.set_weights(load_arrays(d / "weights.npz"))
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)  # creates the slot variables so they can be assigned
    saved = load_arrays(d / "optimizer.npz")
    if len(saved) != len(optimizer.variables):
        raise ValueError(
            f"resume_dir={str(d)!r}: optimizer state has {len(saved)} variables, the model's "
            f"optimizer {len(optimizer.variables)}; it was saved by another model"
        )
    for var, value in zip(optimizer.variables, saved):
        var.assign(value)
    return list(state["history"]), dict(state.get("probe") or {})


def _fingerprint(data: Any) -> str | None:
    return getattr(data, "fingerprint", None)
