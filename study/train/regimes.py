"""Early-stopping regimes replayed on one full fine-tune run's validation-loss curve (pure, no TensorFlow).

A trial fine-tunes for all E epochs once; each early-stopping regime (patience 3, patience 10, ...) is then
read off the recorded `val_loss` curve instead of being trained again. With deterministic training the
replay picks exactly the epoch, and so the weights, that a real `keras.callbacks.EarlyStopping` run would
end with (tests/train/test_regimes.py checks this against Keras bit for bit).

The rule mirrored is Keras 3.15's `EarlyStopping(monitor="val_loss", mode="min", baseline=None)`
(`keras/src/callbacks/early_stopping.py` and `monitor_callback.py`), with 0-based epochs e:
- epochs e < start_from_epoch are not looked at (no improvement, no waiting);
- `best` starts unset, so the first looked-at epoch always improves, even a NaN one;
- every looked-at epoch first does `wait += 1`; it improves when `val_loss + min_delta < best`, compared
  in float32 (Keras' `ops.less` turns both Python floats into float32 tensors), and an improvement sets
  `best` and resets `wait = 0`;
- otherwise training stops at e when `wait >= patience` (and e > 0);
- `restore_best_weights=True` restores the best epoch's weights at the end of training whether or not
  training stopped early (Keras 3 does; Keras 2 restored only after an early stop), provided some epoch
  was looked at.
NaN losses: any comparison with NaN is False, so a NaN epoch never improves (it counts towards patience),
and a NaN in the first looked-at epoch becomes `best`, after which nothing improves again.

Project convention: `patience == 0` means no early stopping at all (no callback): all E epochs are trained
and the last epoch's weights are used. (Keras' own `patience=0` would stop at the first non-improvement.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def replay_early_stopping(
    val_losses: Sequence[float],
    patience: int,
    min_delta: float = 0.0,
    start_from_epoch: int = 0,
    restore_best_weights: bool = False,
) -> dict[str, Any]:
    """Replay Keras' early-stopping rule on a validation-loss curve.

    Args:
        val_losses: `(E,)` validation loss after each of the E trained epochs (E >= 1; NaN/inf allowed).
        patience: epochs without improvement before stopping, >= 0; 0 = no early stopping.
        min_delta: a decrease must exceed this to count as improvement, >= 0 (Keras takes abs(); here a
            negative value is an error).
        start_from_epoch: number of leading epochs not monitored (Keras' warm-up), >= 0.
        restore_best_weights: whether the run ends with the best epoch's weights.

    Returns a dict (epochs 1-based):
        stop_epoch: number of epochs actually trained (E when not stopped early).
        epoch_used: epoch whose weights the regime ends with: `best_epoch` when restore_best_weights
            (and patience > 0 and some epoch was monitored), else `stop_epoch`.
        best_epoch: epoch with the best monitored val_loss under the rule above, among the trained
            epochs; None when no epoch was monitored (E <= start_from_epoch).
        stopped_early: True when training stopped before E epochs.
    """
    losses = _loss_curve(val_losses)
    patience = _non_negative_int(patience, "patience")
    start = _non_negative_int(start_from_epoch, "start_from_epoch")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float, np.integer, np.floating)):
        raise ValueError(f"min_delta must be a number >= 0; got {min_delta!r}")
    if not (np.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"min_delta must be finite and >= 0; got {min_delta}; pass abs(min_delta)")
    margin = float(min_delta)

    best: float | None = None
    best_epoch: int | None = None  # 0-based while looping
    wait = 0
    stop_epoch = len(losses)
    for epoch, current in enumerate(losses):
        if epoch < start:
            continue
        wait += 1
        # Keras: ops.less(current - (-min_delta), best), both converted to float32 tensors.
        if best is None or np.float32(current + margin) < np.float32(best):
            best, best_epoch, wait = current, epoch, 0
            continue
        if patience > 0 and wait >= patience and epoch > 0:
            stop_epoch = epoch + 1
            break

    best_1 = None if best_epoch is None else best_epoch + 1
    restored = restore_best_weights and patience > 0 and best_1 is not None
    return {
        "stop_epoch": stop_epoch,
        "epoch_used": best_1 if restored else stop_epoch,
        "best_epoch": best_1,
        "stopped_early": stop_epoch < len(losses),
    }


def _loss_curve(val_losses: Sequence[float]) -> list[float]:
    try:
        arr = np.asarray(val_losses, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"val_losses must be a sequence of numbers, one per epoch: {err}") from None
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"val_losses must be a non-empty 1-D sequence, one value per epoch; got {arr.shape}")
    return [float(v) for v in arr]  # Python floats, as in Keras' logs


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (epochs); got {value!r}")
    return int(value)
