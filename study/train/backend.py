"""Everything specific to the deep-learning backend's process state: TensorFlow's threads and determinism,
the device a trial computes on, garbage collection between phases, and Keras' generators reset per phase.

Reproducibility (docs RAY.md, "TensorFlow inside trials"): `configure_tensorflow` fixes intra-op threads,
inter-op = 1 and op determinism; each phase reseeds Python, NumPy and Keras from `trial.seed`
(`fresh_keras_state`), so the same seed gives bitwise-identical weights and metrics, in a fresh worker
process or a reused one.
"""

from __future__ import annotations

import gc
import random
import warnings
from typing import Any

import numpy as np

from study.train import model_cache


def configure_tensorflow(threads: int, deterministic: bool = True) -> None:
    """Intra-op threads = `threads`, inter-op = 1, op determinism on; GPU memory growth when GPUs exist.

    Call it before TensorFlow runs anything in the process. Calling it again with the same values is a
    no-op. TensorFlow cannot change its thread pools once started, so a different `threads` later raises
    `RuntimeError` (rather than warning): results record `threads`, and weights differ between 1 and 2
    threads, so silently running with other settings would mislabel them.
    """
    import tensorflow as tf

    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads={threads!r}: TensorFlow intra-op threads must be an integer >= 1")
    for gpu in tf.config.list_physical_devices("GPU"):
        if not tf.config.experimental.get_memory_growth(gpu):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # GPUs already initialised: the setting only matters for memory use
                warnings.warn(
                    f"could not enable memory growth on {gpu.name}: TensorFlow already started", stacklevel=2
                )
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current != (threads, 1):
        # First configuration in this process: TensorFlow and Keras are imported and nothing is built yet.
        # Move the imported modules' millions of objects out of the garbage collector's view, so that the
        # collection at the start of every phase (`collect_garbage`, which also freezes what phases keep)
        # does not walk them.
        gc.freeze()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            # One inter-op thread: with TensorFlow's default pool, identical CPU runs differed (RAY.md).
            tf.config.threading.set_inter_op_parallelism_threads(1)
            # Op determinism refuses random ops without a seed; phases reseed Keras, not TensorFlow
            # (see `fresh_keras_state`), so the global seed is set here, once per process.
            tf.random.set_seed(0)
        except RuntimeError as exc:
            raise RuntimeError(
                f"TensorFlow already started in this process with intra-op threads={current[0]} and "
                f"inter-op threads={current[1]} (0 = TensorFlow's default), and cannot switch to "
                f"threads={threads}, inter-op=1. Call study.train.backend.configure_tensorflow(threads) "
                "before "
                "building any model, and keep TrialConfig.threads the same for all trials of a study "
                "(a reused Ray worker keeps the first trial's threads)."
            ) from exc
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        # TensorFlow has no public switch back; the framework-level function has existed since TF 2.9.
        from tensorflow.python.framework import config as tf_framework_config

        tf_framework_config.disable_op_determinism()


def device_in_use(threads: int) -> dict[str, Any]:
    """`{"device", "devices"}` of this process's training: the first visible GPU's name and the number of
    visible GPUs (Ray makes only a trial's own GPUs visible), else "CPU" and `threads` (TensorFlow's intra-op
    threads, the CPUs a trial computes on)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return {"device": "CPU", "devices": float(threads)}
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return {"device": str(name), "devices": float(len(gpus))}


# Phases between full garbage collections (see `collect_garbage`).
FULL_GC_EVERY = 16
_phases_since_full_gc = 0


def collect_garbage() -> None:
    """Free what earlier phases left (their fresh models are reference cycles) without walking, every phase,
    the ~0.5M objects that outlive them (TensorFlow, Keras, Ray, the remembered models, decoded data): those
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


def fresh_keras_state(seed: int) -> None:
    """Reseed Python's, NumPy's and Keras' generators and free earlier models: a reused worker process starts
    each phase as a fresh one would.

    As `keras.utils.set_random_seed` and `keras.backend.clear_session`, minus the two calls that clear
    TensorFlow's caches of instantiated functions (`tf.random.set_seed` and the session's kernel-cache
    reset), which cost a remembered model (`study.train.model_cache`) ~0.8 s of re-instantiation per phase.
    Neither is needed for reproducibility (and `model_cache.trim_kernel_cache` bounds the memory TensorFlow
    would otherwise keep): Keras draws every initial weight and dropout mask from stateless ops seeded
    by its `SeedGenerator`s, whose seeds come from Python's `random`; TensorFlow's global seed (which op
    determinism requires to be set) is set once per process by `configure_tensorflow`.
    """
    collect_garbage()
    model_cache.trim_kernel_cache()
    random.seed(seed)
    np.random.seed(seed)
    # Keras' global SeedGenerator (unseeded `keras.random` calls) is recreated from `random` on next use.
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
