"""Batches of one phase as the backend sees them, and predictions without `model.predict`'s per-call set-up
(the backend-specific part of each in `study.train.backend`).

`IndexedBatches` holds a phase's training arrays once and yields them in each epoch's order (bit for bit
the batches of `model.fit(x[order], y[order], shuffle=False)`); `RowBatches` and `GatheredBatches` gather
rows of a large dataset batch by batch instead (the decode cache maps one copy per machine; a trial copies
no split of it whole); `EpochHooks` runs a phase's per-epoch work
inside one `fit` call (each `fit` call costs ~20 ms of Keras set-up). Epoch hooks only: with batch hooks
Keras would fetch the logs after every batch, which cost ~40 % of a small model's epoch time here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from study.train import backend
from study.train.results import EpochLogs

# Prediction batch size: fixed (not the training batch size) so evaluation numbers do not depend on it.
EVAL_BATCH_SIZE = 64
PREDICT_CHUNK = 512  # images per predict call when outputs are converted chunk by chunk


def predict_chunked(
    model: keras.Model, x: np.ndarray, convert: Callable[[np.ndarray], np.ndarray] | None
) -> np.ndarray | None:
    """`model.predict(x, batch_size=EVAL_BATCH_SIZE)` (`predict_batches`) in chunks of `PREDICT_CHUNK`
    images, each passed through `convert`; None if any output is not finite."""
    parts = []
    for start in range(0, len(x), PREDICT_CHUNK):
        chunk = tensor_batches(x[start : start + PREDICT_CHUNK], EVAL_BATCH_SIZE)
        out = np.asarray(predict_batches(model, chunk), np.float32)
        if not np.all(np.isfinite(out)):
            return None
        parts.append(convert(out) if convert is not None else out)
    return np.concatenate(parts)


def predict_batches(model: keras.Model, batches: Any) -> np.ndarray:
    """`model.predict(batches)`, bit for bit, without its per-call set-up (~10-20 ms: data adapter, epoch
    iterator, callbacks): `backend.predict_function`, called once per batch.

    `batches`: a sequence of input batches (`tensor_batches`) or batches made by `batched` (of images, or of
    `(images, labels)` pairs, labels ignored).
    """
    predict = None
    out = []
    for batch in batches:
        x = batch[0] if isinstance(batch, tuple) else batch
        if predict is None:
            predict = backend.predict_function(model, x)
        out.append(predict(x))
    return np.concatenate(out)


def eval_batches(parts: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> Sequence[Any]:
    """The images `x[rows]` of every `(x, rows)` in `parts` (rows None: all of `x`), one after the other, in
    input batches of `EVAL_BATCH_SIZE`: converted once (`tensor_batches` of their concatenation) when they
    take at most `KEEP_BATCHES_MAX_BYTES`, else gathered and converted as each batch is read
    (`GatheredBatches`: the same batches, without a copy of the images)."""
    nbytes = sum((len(x) if rows is None else len(rows)) * _row_bytes(x) for x, rows in parts)
    if nbytes > KEEP_BATCHES_MAX_BYTES:
        return GatheredBatches(parts, EVAL_BATCH_SIZE)
    return tensor_batches(
        np.concatenate([x if rows is None else x[rows] for x, rows in parts]), EVAL_BATCH_SIZE
    )


class GatheredBatches(Sequence):
    """`tensor_batches(np.concatenate([x[rows] for x, rows in parts]), batch_size)`, each batch gathered from
    the arrays and converted when it is read (rows None: all of `x`)."""

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray | None]], batch_size: int) -> None:
        self._parts = [
            (x, np.arange(len(x)) if rows is None else np.asarray(rows, np.int64)) for x, rows in parts
        ]
        self._n, self._batch_size = sum(len(rows) for _, rows in self._parts), int(batch_size)

    def __len__(self) -> int:
        return -(-self._n // self._batch_size)

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(i)
        lo, hi = i * self._batch_size, min((i + 1) * self._batch_size, self._n)
        pieces, offset = [], 0
        for x, rows in self._parts:
            start, stop = max(lo - offset, 0), min(hi - offset, len(rows))
            if start < stop:
                pieces.append(x[rows[start:stop]])
            offset += len(rows)
        return backend.host_tensor(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))


def _row_bytes(x: np.ndarray) -> int:
    return x.nbytes // len(x) if len(x) else 0


def tensor_batches(x: np.ndarray, batch_size: int) -> list[Any]:
    """`x` in batches of `batch_size` as the backend's tensors, converted once per phase (the batches
    `batched(x, batch_size)` would yield)."""
    return [backend.host_tensor(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]


class EpochHooks(keras.callbacks.Callback):
    """`begin(epoch)` at the start and `end(epoch, logs)` at the end of every epoch of a `fit` call (0-based
    epoch, Keras' epoch logs). Epoch hooks only: with batch hooks Keras would fetch the logs after every
    batch (module docstring)."""

    def __init__(self, begin: Callable[[int], None], end: Callable[[int, EpochLogs], None]) -> None:
        super().__init__()
        self._begin, self._end = begin, end

    def on_epoch_begin(self, epoch: int, logs: EpochLogs | None = None) -> None:
        self._begin(epoch)

    def on_epoch_end(self, epoch: int, logs: EpochLogs | None = None) -> None:
        self._end(epoch, dict(logs or {}))


def batched(x: Any, batch_size: int, drop_remainder: bool = False) -> Any:
    """Array `x` (or a tuple of arrays) in batches, converted to tensors once and reusable for every
    fit/predict (`backend.dataset`: a `tf.data.Dataset` on TensorFlow, a `keras.utils.PyDataset` elsewhere)."""
    return backend.dataset(x, batch_size, drop_remainder)


class IndexedBatches:
    """Training batches in a given order, gathered from arrays held once per phase.

    Same batches as `model.fit(x[order], y[order], batch_size, shuffle=False)`, bit for bit. A new epoch
    assigns its arrays (`set_data`) and order (`in_order`) to the one pipeline built here
    (`backend.indexed_batches_class()`: variables read by a `tf.data` pipeline on TensorFlow, a
    `keras.utils.PyDataset` elsewhere) instead of building a new one every epoch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        self._pipeline = backend.indexed_batches_class()(x, y, batch_size)

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """New arrays of the same shapes and dtypes (the next epoch's pretext pairs)."""
        self._pipeline.set_data(x, y)

    def in_order(self, order: np.ndarray) -> Any:
        """The dataset, yielding `(x[order], y[order])` in batches (valid until the next call)."""
        return self._pipeline.in_order(order)


class RowBatches:
    """Training batches of `(x[rows], y[rows])` in a given order, each gathered from `x` and `y` when Keras
    reads it (`backend.ArrayBatches` with `rows`): for inputs too large to copy whole (a split of a dataset
    memory-mapped from the decode cache). The same batches as `IndexedBatches(x[rows], y[rows], batch_size)`,
    bit for bit."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, rows: np.ndarray) -> None:
        self._batches = backend.ArrayBatches((x, y), batch_size, rows=rows)

    def in_order(self, order: np.ndarray) -> Any:
        """The dataset, yielding `(x[rows[order]], y[rows[order]])` in batches (valid until the next call)."""
        return self._batches.in_order(order)


# `IndexedBatches` kept between phases, by array shapes, dtypes and batch size (most recent last).
_KEPT_BATCHES: dict[tuple, IndexedBatches] = {}
KEEP_BATCHES = 4  # the demo's phases use three layouts (angle-head pairs, image pairs, fine-tune images)
KEEP_BATCHES_MAX_BYTES = 32 * 2**20  # larger inputs are not kept: their phases are long, the memory large


def indexed_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, rows: np.ndarray | None = None
) -> IndexedBatches | RowBatches:
    """`IndexedBatches(x, y, batch_size)`, reusing one of an earlier phase of this process when the layout
    matches (its variables assigned the new arrays: the same batches, bit for bit), which saves creating the
    variables and tracing the pipeline's map function (~20 ms a phase). Inputs over
    `KEEP_BATCHES_MAX_BYTES` are neither kept nor reused.

    With `rows` (int (n,)): the batches of `x[rows], y[rows]`; gathered once here when they take at most
    `KEEP_BATCHES_MAX_BYTES`, else batch by batch (`RowBatches`), so a large split is never copied whole.
    """
    if rows is not None:
        rows = np.asarray(rows, np.int64)
        if len(rows) * (_row_bytes(x) + _row_bytes(y)) > KEEP_BATCHES_MAX_BYTES:
            return RowBatches(x, y, batch_size, rows)
        x, y = x[rows], y[rows]
    key = (x.shape, x.dtype.str, y.shape, y.dtype.str, batch_size)
    if x.nbytes + y.nbytes > KEEP_BATCHES_MAX_BYTES:
        return IndexedBatches(x, y, batch_size)
    batches = _KEPT_BATCHES.pop(key, None)
    if batches is None:
        batches = IndexedBatches(x, y, batch_size)
    else:
        batches.set_data(x, y)
    _KEPT_BATCHES[key] = batches
    while len(_KEPT_BATCHES) > KEEP_BATCHES:
        del _KEPT_BATCHES[next(iter(_KEPT_BATCHES))]
    return batches
