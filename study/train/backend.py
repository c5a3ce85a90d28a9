"""Everything specific to the deep-learning backend Keras runs on (`KERAS_BACKEND`: tensorflow, the default
and the CPU install; jax; torch): threads and determinism, the device a trial computes on, memory growth,
the input pipeline's tensors, predictions without `model.predict`'s per-call set-up, garbage collection
between phases, and Keras' generators reset per phase. No other module of `study.train` imports a backend.

Reproducibility (docs RAY.md, "TensorFlow inside trials"): `configure` fixes intra-op threads, inter-op = 1
and op determinism; each phase reseeds Python, NumPy and Keras from `trial.seed` (`fresh_keras_state`), so
the same seed gives bitwise-identical weights and metrics on one machine and backend, in a fresh worker
process or a reused one. Numbers differ between backends (other kernels), which is why the backend and its
version are part of the pretext-cache key (`study.trainables.pretext_key`).

Mixed precision is Keras' own (`models.dtype_policy`, `mixed_bfloat16`) and needs nothing here.
"""

from __future__ import annotations

import gc
import os
import random
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from study.spec import backend as spec_backend
from study.train import model_cache


def name() -> str:
    """The backend Keras runs on in this process: "tensorflow", "jax" or "torch"."""
    return keras.backend.backend()


def version() -> str:
    """`"<backend> <version>"` of the backend Keras runs on (e.g. "jax 0.10.2"): `spec.backend`'s name for
    it, which the manifest and the pretext-cache key hold."""
    return spec_backend.backend_version(name())


# ---------------------------------------------------------------------------------------------------------
# process set-up
def configure(threads: int, deterministic: bool = True) -> None:
    """Intra-op threads = `threads`, inter-op = 1, deterministic kernels; GPU memory growth where that is a
    setting (TensorFlow; JAX: no preallocation).

    Call it before the backend runs anything in the process. Calling it again with the same values is a
    no-op. No backend can change its thread pools once started, so a different `threads` later raises
    `RuntimeError` (rather than warning): results record `threads`, and weights differ between 1 and 2
    threads, so silently running with other settings would mislabel them.
    """
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads={threads!r}: the backend's intra-op threads must be an integer >= 1")
    {"tensorflow": _configure_tensorflow, "jax": _configure_jax, "torch": _configure_torch}[name()](
        int(threads), deterministic
    )


def configure_tensorflow(threads: int, deterministic: bool = True) -> None:
    """`configure`, under the name callers used when TensorFlow was the only backend."""
    configure(threads, deterministic)


def _first_configuration() -> None:
    """First configuration in this process: the backend and Keras are imported and nothing is built yet.
    Move the imported modules' millions of objects out of the garbage collector's view, so that the
    collection at the start of every phase (`collect_garbage`, which also freezes what phases keep) does not
    walk them."""
    gc.freeze()


def _already_started(backend: str, now: str, threads: int) -> RuntimeError:
    return RuntimeError(
        f"{backend} already started in this process with {now}, and cannot switch to threads={threads}, "
        "inter-op=1. Call study.train.backend.configure(threads) before building any model, and keep "
        "TrialConfig.threads the same for all trials of a study (a reused Ray worker keeps the first "
        "trial's threads)."
    )


def _configure_tensorflow(threads: int, deterministic: bool) -> None:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        if not tf.config.experimental.get_memory_growth(gpu):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # GPUs already initialised: the setting only matters for memory use
                warnings.warn(
                    f"could not enable memory growth on {gpu.name}: TensorFlow already started", stacklevel=3
                )
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current != (threads, 1):
        _first_configuration()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            # One inter-op thread: with TensorFlow's default pool, identical CPU runs differed (RAY.md).
            tf.config.threading.set_inter_op_parallelism_threads(1)
            # Op determinism refuses random ops without a seed; phases reseed Keras, not TensorFlow
            # (see `fresh_keras_state`), so the global seed is set here, once per process.
            tf.random.set_seed(0)
        except RuntimeError as exc:
            now = (
                f"intra-op threads={current[0]} and inter-op threads={current[1]} (0 = TensorFlow's default)"
            )
            raise _already_started("TensorFlow", now, threads) from exc
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # TensorFlow has no public switch back; the framework-level function has existed since TF 2.9.
        from tensorflow.python.framework import config as tf_framework_config

        tf_framework_config.disable_op_determinism()


# The XLA flags `_configure_jax` set, once per process (XLA reads them when JAX starts its backends).
_jax_flags: tuple[str, ...] | None = None


def jax_flags(threads: int, deterministic: bool) -> tuple[str, ...]:
    """XLA flags for `threads` intra-op threads (one thread: XLA's CPU kernels single-threaded, as TensorFlow
    with one intra-op thread) and, with `deterministic`, deterministic GPU kernels. On jaxlib 0.10's CPU
    client they change little: its convolutions ran on one core with or without them, and a matmul's CPU
    time over wall time was 1.3 either way (2-core machine); same machine, same results regardless."""
    flags = (
        f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}",
        f"intra_op_parallelism_threads={threads}",
    )
    return flags + (("--xla_gpu_deterministic_ops=true",) if deterministic else ())


def _configure_jax(threads: int, deterministic: bool) -> None:
    global _jax_flags
    from jax._src import xla_bridge

    flags = jax_flags(threads, deterministic)
    if _jax_flags == flags:
        return
    if xla_bridge.backends_are_initialized():
        now = f"XLA_FLAGS={' '.join(_jax_flags or ()) or os.environ.get('XLA_FLAGS', '(unset)')!r}"
        raise _already_started("JAX", now, threads)
    _first_configuration()
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in _flag_names(flags)]
    os.environ["XLA_FLAGS"] = " ".join(kept + list(flags))
    # JAX takes 75 % of a GPU's memory at start by default: grow as needed instead (several trials may
    # share a GPU, as TensorFlow's memory growth allows).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    _jax_flags = flags


def _flag_names(flags: tuple[str, ...]) -> set[str]:
    return {f.split("=")[0] for f in flags} | {"--xla_gpu_deterministic_ops"}


# The intra-op threads `_configure_torch` set, once per process (PyTorch could change them later, but results
# differ between thread counts: a trial must not run with other threads than it records).
_torch_threads: int | None = None


def _configure_torch(threads: int, deterministic: bool) -> None:
    global _torch_threads
    import torch

    if _torch_threads not in (None, threads):
        raise _already_started("PyTorch", f"intra-op threads={_torch_threads}", threads)
    if _torch_threads is None:
        _first_configuration()
        if torch.get_num_interop_threads() != 1:
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError as exc:  # only possible before PyTorch's first parallel work
                now = f"{torch.get_num_interop_threads()} inter-op threads"
                raise _already_started("PyTorch", now, threads) from exc
        torch.set_num_threads(threads)
        # With one intra-op thread, PyTorch 2.13's oneDNN convolution writes past its buffer in the input
        # gradient of a strided 1x1 convolution in channels-last layout (Keras' layout; the projection
        # shortcuts of the small encoder and of ResNet50), and glibc aborts the process a few steps later
        # ("corrupted double-linked list"). PyTorch's own CPU kernels do not; with 2 or more threads neither.
        torch.backends.mkldnn.enabled = threads > 1
        _torch_threads = threads
    # cuBLAS needs a fixed workspace to be deterministic (read when CUDA starts).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def device_in_use(threads: int) -> dict[str, Any]:
    """`{"device", "devices"}` of this process's training: the first visible GPU's name and the number of
    visible GPUs (Ray makes only a trial's own GPUs visible), else "CPU" and `threads` (the backend's
    intra-op threads, the CPUs a trial computes on)."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus[:1]]
        count = len(gpus)
    elif backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        names, count = [d.device_kind for d in gpus[:1]], len(gpus)
    else:
        import torch

        count = torch.cuda.device_count()
        names = [torch.cuda.get_device_name(0)] if count else []
    if not count:
        return {"device": "CPU", "devices": float(threads)}
    return {"device": str(names[0]), "devices": float(count)}


# ---------------------------------------------------------------------------------------------------------
# between phases
# Phases between full garbage collections (see `collect_garbage`).
FULL_GC_EVERY = 16
_phases_since_full_gc = 0


def collect_garbage() -> None:
    """Free what earlier phases left (their fresh models are reference cycles) without walking, every phase,
    the ~0.5M objects that outlive them (the backend, Keras, Ray, the remembered models, decoded data): those
    alive after a collection are frozen (`gc.freeze`), so later collections, explicit or automatic, skip them
    (~70 ms -> ~0 per phase for the demo). Every `FULL_GC_EVERY` phases they are thawed and collected too, so
    a cycle that died after being frozen (a model the cache evicted) is still freed, late but freed."""
    global _phases_since_full_gc
    _phases_since_full_gc += 1
    if _phases_since_full_gc >= FULL_GC_EVERY:
        gc.unfreeze()
        _phases_since_full_gc = 0
    gc.collect()
    gc.freeze()


def trim_kernel_cache() -> bool:
    """Clear TensorFlow's eager kernel cache once enough values were created since the last clear
    (`model_cache.CLEAR_KERNELS_AFTER`; see `study.train.model_cache`). Returns whether it cleared. Call
    between phases, never during training. Other backends keep no such cache: nothing to clear."""
    if model_cache.created_values() < model_cache.CLEAR_KERNELS_AFTER:
        return False
    if name() == "tensorflow":
        from tensorflow.python.eager import context  # what keras.backend.clear_session calls

        context.context().clear_kernel_cache()
    model_cache.kernels_cleared()
    return name() == "tensorflow"


def fresh_keras_state(seed: int) -> None:
    """Reseed Python's, NumPy's and Keras' generators and free earlier models: a reused worker process starts
    each phase as a fresh one would.

    As `keras.utils.set_random_seed` and `keras.backend.clear_session`, minus the two calls that clear
    TensorFlow's caches of instantiated functions (`tf.random.set_seed` and the session's kernel-cache
    reset), which cost a remembered model (`study.train.model_cache`) ~0.8 s of re-instantiation per phase.
    Neither is needed for reproducibility (and `trim_kernel_cache` bounds the memory TensorFlow would
    otherwise keep): Keras draws every initial weight and dropout mask from stateless ops seeded by its
    `SeedGenerator`s, whose seeds come from Python's `random`; TensorFlow's global seed (which op
    determinism requires to be set) is set once per process by `configure`. PyTorch's global generator is
    reseeded (as `keras.utils.set_random_seed` does): Keras' dropout layers without a seed draw from it there.
    """
    collect_garbage()
    trim_kernel_cache()
    random.seed(seed)
    np.random.seed(seed)
    if name() == "torch":  # Keras' PyTorch dropout without a seed draws from torch's global generator
        import torch

        torch.manual_seed(seed)
    # Keras' global SeedGenerator (unseeded `keras.random` calls) is recreated from `random` on next use.
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)


# ---------------------------------------------------------------------------------------------------------
# tensors and predictions
def host_tensor(x: np.ndarray) -> Any:
    """`x` as the backend's input tensor, converted once (TensorFlow: a constant; other backends take numpy
    batches as they are: Keras converts them per step either way)."""
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.constant(x)
    return x


def dataset(arrays: Any, batch_size: int, drop_remainder: bool = False) -> Any:
    """Array `arrays` (or a tuple of arrays) in batches of `batch_size`, converted once and reusable for every
    fit/predict: a batched `tf.data.Dataset` on TensorFlow, a `keras.utils.PyDataset` elsewhere (the same
    batches)."""
    if name() == "tensorflow":
        import tensorflow as tf

        tensors = tuple(tf.constant(a) for a in arrays) if isinstance(arrays, tuple) else tf.constant(arrays)
        return tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size, drop_remainder=drop_remainder)
    return ArrayBatches(arrays, batch_size, drop_remainder)


class ArrayBatches(keras.utils.PyDataset):
    """Arrays (one, or a tuple) in consecutive batches of `batch_size` (the last one smaller unless
    `drop_remainder`), in an order that can change between epochs (`in_order`); Keras reads the batches in
    the main thread (no workers: they would reorder nothing but cost a thread per fit). With `rows` (int
    (n,)), the batches are those of `arrays[rows]`, each gathered from `arrays` when read (no copy of the
    rows up front)."""

    def __init__(
        self, arrays: Any, batch_size: int, drop_remainder: bool = False, rows: np.ndarray | None = None
    ) -> None:
        super().__init__()
        self._arrays, self._batch_size, self._drop = arrays, int(batch_size), drop_remainder
        self._order: np.ndarray | None = None
        self._rows = None if rows is None else np.asarray(rows, np.int64)

    def _n(self) -> int:
        if self._rows is not None:
            return len(self._rows)
        return len(self._arrays[0] if isinstance(self._arrays, tuple) else self._arrays)

    def __len__(self) -> int:
        n, b = self._n(), self._batch_size
        return n // b if self._drop else -(-n // b)

    def __getitem__(self, i: int) -> Any:
        if i >= len(self):
            raise IndexError(i)
        index = slice(i * self._batch_size, (i + 1) * self._batch_size)
        if self._order is not None:
            index = self._order[index]
        if self._rows is not None:
            index = self._rows[index]
        if isinstance(self._arrays, tuple):
            return tuple(a[index] for a in self._arrays)
        return self._arrays[index]

    def set_arrays(self, arrays: Any) -> None:
        """New arrays of the same layout (the next epoch's pairs)."""
        self._arrays = arrays

    def in_order(self, order: np.ndarray | None) -> ArrayBatches:
        """Batches of `arrays[order]` from now on (None: the arrays' own order)."""
        self._order = None if order is None else np.asarray(order, np.int64)
        return self


class TensorFlowIndexedBatches:
    """`batches.IndexedBatches` on TensorFlow: the arrays and the order live in CPU variables read by one
    `tf.data` pipeline built here; a new epoch assigns them instead of converting the arrays and building
    (and tracing) a new pipeline every epoch, which cost ~11 ms per epoch of the demo's ~0.1 s fine-tune
    epochs."""

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
        self._x.assign(x)
        self._y.assign(y)

    def in_order(self, order: np.ndarray) -> Any:
        self._order.assign(np.asarray(order, np.int64))
        return self._dataset


class NumpyIndexedBatches:
    """`batches.IndexedBatches` on the other backends: a `PyDataset` gathering each batch from the arrays
    (numpy fancy indexing, in the main thread: ~1 ms a batch of 32 images at 224 px)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        # copies, as TensorFlow's variables are: the caller may reuse or drop its arrays
        self._batches = ArrayBatches((np.array(x), np.array(y)), batch_size)

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self._batches.set_arrays((np.array(x), np.array(y)))

    def in_order(self, order: np.ndarray) -> ArrayBatches:
        return self._batches.in_order(order)


def indexed_batches_class() -> type:
    """The class `batches.IndexedBatches` builds on this backend."""
    return TensorFlowIndexedBatches if name() == "tensorflow" else NumpyIndexedBatches


def predict_function(model: keras.Model, example: Any) -> Callable[[Any], np.ndarray]:
    """`f(x) -> np.ndarray`: the model's outputs for the input batch `x`, bit for bit `model.predict`'s,
    without its per-call set-up (~10-20 ms: data adapter, epoch iterator, callbacks). `example`: a first
    batch (its shape and dtype, any batch size).

    TensorFlow: the model's own compiled predict function, traced once for any batch size (as
    `model.predict`'s dataset would have it traced: a first call with a full batch would trace for that
    size and the last, smaller batch trace it again), each batch passed as `model.predict` passes it (a list
    of one batch). JAX: the model's stateless call, compiled once per model and batch shape, on the
    variables' current values (Keras' own predict step donates them, so it is not called directly).
    PyTorch: the model's predict function without gradients.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        model.make_predict_function()
        predict = model.predict_function
        if hasattr(predict, "get_concrete_function"):
            predict.get_concrete_function([tf.TensorSpec((None, *example.shape[1:]), example.dtype)])
        return lambda x: np.asarray(predict([x]))
    if backend == "jax":
        stateless = _jax_predict(model)
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )
        return lambda x: np.asarray(stateless(*state, x))
    model.make_predict_function()
    return lambda x: keras.ops.convert_to_numpy(model.predict_function([keras.ops.convert_to_tensor(x)]))


def loss(loss_name: str) -> Any:
    """What `compile` gets for Keras' loss `loss_name`: the name itself, but on PyTorch "binary_crossentropy"
    as `_torch_binary_crossentropy` (a divergence is then reported as on the other backends)."""
    if loss_name == "binary_crossentropy" and name() == "torch":
        return _torch_binary_crossentropy
    return loss_name


def _torch_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Keras' `binary_crossentropy` on PyTorch, `(N, 1)` probabilities -> `(N,)` losses, NaN for a NaN
    probability. PyTorch's own `binary_cross_entropy` raises on a NaN probability (a model whose learning
    rate exploded), where TensorFlow and JAX return a NaN loss, which a phase reports as a divergence;
    finite probabilities give Keras' own values, bit for bit."""
    import torch

    y_pred = keras.ops.convert_to_tensor(y_pred)
    nan = torch.isnan(y_pred)
    losses = keras.losses.binary_crossentropy(y_true, torch.where(nan, 0.5, y_pred))
    return torch.where(nan.any(dim=-1), float("nan"), losses)


def optimizer_step(loss_fn: Callable[[], Any], variables: list, optimizer: keras.optimizers.Optimizer) -> Any:
    """TensorFlow and PyTorch: `loss_fn()`, its gradients with respect to `variables` and `optimizer`'s step
    on them, in place; returns the loss (a training step of a model's own, as `contrastive_models`'). JAX
    steps are stateless: `value_and_grad`."""
    if name() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss
    import torch

    for v in variables:
        v.value.grad = None
    loss = loss_fn()
    loss.backward()
    with torch.no_grad():
        optimizer.apply([v.value.grad for v in variables], variables)
    return loss.detach()


def value_and_grad(fn: Callable, has_aux: bool = False) -> Callable:
    """JAX's `value_and_grad` (a stateless step's gradients)."""
    import jax

    return jax.value_and_grad(fn, has_aux=has_aux)


# JAX: each model's compiled stateless call (weak keys: a dropped model drops its function).
_JAX_PREDICT: Any = None


def _jax_predict(model: keras.Model) -> Callable:
    global _JAX_PREDICT
    import jax

    if _JAX_PREDICT is None:
        _JAX_PREDICT = weakref.WeakKeyDictionary()
    fn = _JAX_PREDICT.get(model)
    if fn is None:
        ref = weakref.ref(model)  # the compiled function must not keep its model alive

        def call(trainable, non_trainable, x):
            return ref().stateless_call(trainable, non_trainable, x, training=False)[0]

        fn = _JAX_PREDICT[model] = jax.jit(call)
    return fn
