"""Batches of one phase as TensorFlow sees them, and predictions without `model.predict`'s per-call set-up.

`IndexedBatches` holds a phase's training arrays once and yields them in each epoch's order (bit for bit
the batches of `model.fit(x[order], y[order], shuffle=False)`); `EpochHooks` runs a phase's per-epoch work
inside one `fit` call (each `fit` call costs ~20 ms of Keras set-up). Epoch hooks only: with batch hooks
Keras would fetch the logs after every batch, which cost ~40 % of a small model's epoch time here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

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
    iterator, callbacks): the model's own compiled predict function, called once per batch.

    `batches`: a sequence of input batches (`tensor_batches`) or a batched `tf.data.Dataset` (of images, or
    of `(images, labels)` pairs, labels ignored). Each batch's images go to the function as `model.predict`
    passes them (a list of one batch), so the same traced function computes them.
    """
    import tensorflow as tf

    model.make_predict_function()
    predict = model.predict_function
    out = []
    for batch in batches:
        x = batch[0] if isinstance(batch, tuple) else batch
        if not out and hasattr(predict, "get_concrete_function"):
            # Traced once for any batch size, as `model.predict`'s dataset would have it traced: a first call
            # with a full batch would trace for that size and the last, smaller batch trace it again.
            predict.get_concrete_function([tf.TensorSpec((None, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(predict([x])))
    return np.concatenate(out)


def tensor_batches(x: np.ndarray, batch_size: int) -> list[Any]:
    """`x` in batches of `batch_size` as tensors, converted once per phase (the batches a
    `tf.data.Dataset.from_tensor_slices(x).batch(batch_size)` would yield)."""
    import tensorflow as tf

    return [tf.constant(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]


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


def batched(x: Any, batch_size: int):
    """Array `x` (or a tuple of arrays) as a `tf.data.Dataset` of batches, converted to tensors once and
    reusable for every fit/predict."""
    import tensorflow as tf

    tensors = tuple(tf.constant(a) for a in x) if isinstance(x, tuple) else tf.constant(x)
    return tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)


class IndexedBatches:
    """Training batches in a given order, gathered from arrays held once per phase.

    Same batches as `model.fit(x[order], y[order], batch_size, shuffle=False)`, bit for bit. The arrays and
    the order live in CPU variables read by one `tf.data` pipeline built here: a new epoch assigns them
    (`in_order`, `set_data`) instead of converting the arrays and building (and tracing) a new pipeline
    every epoch, which cost ~11 ms per epoch of the demo's ~0.1 s fine-tune epochs.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        import tensorflow as tf

        n = len(x)
        with tf.device("/CPU:0"):  # input data stay in host memory, also on GPU machines
            self._x = tf.Variable(x, trainable=False)
            self._y = tf.Variable(y, trainable=False)
            self._order = tf.Variable(np.arange(n, dtype=np.int64), trainable=False)

        def batch(b):
            index = self._order[b * batch_size : (b + 1) * batch_size]
            return tf.gather(self._x, index), tf.gather(self._y, index)

        steps = -(-n // batch_size)
        self._dataset = tf.data.Dataset.range(steps).map(batch).prefetch(1)

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """New arrays of the same shapes and dtypes (the next epoch's pretext pairs)."""
        self._x.assign(x)
        self._y.assign(y)

    def in_order(self, order: np.ndarray):
        """The dataset, yielding `(x[order], y[order])` in batches (valid until the next call)."""
        self._order.assign(np.asarray(order, np.int64))
        return self._dataset


# `IndexedBatches` kept between phases, by array shapes, dtypes and batch size (most recent last).
_KEPT_BATCHES: dict[tuple, IndexedBatches] = {}
KEEP_BATCHES = 4  # the demo's phases use three layouts (angle-head pairs, image pairs, fine-tune images)
KEEP_BATCHES_MAX_BYTES = 32 * 2**20  # larger inputs are not kept: their phases are long, the memory large


def indexed_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> IndexedBatches:
    """`IndexedBatches(x, y, batch_size)`, reusing one of an earlier phase of this process when the layout
    matches (its variables assigned the new arrays: the same batches, bit for bit), which saves creating the
    variables and tracing the pipeline's map function (~20 ms a phase). Inputs over
    `KEEP_BATCHES_MAX_BYTES` are neither kept nor reused."""
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
