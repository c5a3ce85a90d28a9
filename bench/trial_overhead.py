"""Trial overhead: share of a trial's wall time not spent in training/evaluation steps, side by side for
three settings: `reuse+models` (the project's default: `reuse_actors=True` and each worker keeps its
compiled models, `study.train.model_cache`), `reuse` (`reuse_actors=True`, `STUDY_MODEL_CACHE=0`: every phase
compiles and traces a new model) and `fresh` (`reuse_actors=False`: a new worker process per trial).

Run from the repository root:

    .venv/bin/python bench/trial_overhead.py                        # demo, 2 seeds x 3 settings x 3, ~12 min
    .venv/bin/python bench/trial_overhead.py --seeds 9 --repeats 1  # the whole demo grid, 3 settings, ~5-15 min
    .venv/bin/python bench/trial_overhead.py --quick                # smoke preset, 1 seed, 1 repeat, ~1 min

Default: the demo preset with 2 seeds (8 trials) per study, 3 studies per setting (order rotated per repeat).
`--records FILE` also writes every trial's record and breakdown (JSON) for a closer look.

Each study is the preset's grid (study.search_spaces, `--seeds` of them) run by a Tuner built like
`study.run.runner.run_study` builds it (`runner.tuner_configs`: same RunConfig, FailureConfig, CheckpointConfig;
`tune.with_resources` with the preset's CPUs; the same `TUNE_GLOBAL_CHECKPOINT_S=1`; data prepared on the
driver by `runner.prepare_data`; a fresh pretext cache per study), with only the setting switched. The
trainable is `study.trainables.two_stage_trial`, called unchanged by a wrapper that installs timers in the
worker (patched attributes, restored after the trial):

- `keras.Model.fit` / `predict` get an extra callback, first in the list, with epoch / test / predict
  begin-end hooks only (no batch hooks, so Keras keeps its asynchronous dispatch): per epoch, the
  training-step time and the validation time inside fit (a call may run one epoch or a whole phase); the
  predict loop time; the call's set-up outside them. What runs between two epochs of one call (the
  fine-tune's epoch-end work: evaluation, metrics, reports, checkpoints) is timed on its own, never as
  set-up; `batches.predict_batches` (evaluation through the model's predict function, where it exists)
  is timed as a predict loop;
- `trainables.load_trial_data`, `models.build_encoder` / `build_model`, `backend.fresh_keras_state`
  (each phase's reset: a garbage collection, reseeding, the occasional kernel-cache trim), `make_batch` of
  the task that `pretext.get_task` returns when called on the trial's thread (validation pairs; training
  pairs are made ahead in run_pretext's background thread, and the trial's waits for them are timed
  instead), `trainables._report_with_state` (checkpoint files), `ray.tune.report`
  (every report, including checkpoint persistence and the wait for the driver), `PretextResult.save/load`
  (pretext cache); TensorFlow's import is timed by importing it in the wrapper first.

Times are exclusive (a timer running inside another is subtracted from the outer one). Graph tracing per
model and function = first epoch or call - median of the later ones (train steps, validation, predict); the
pretext phase's single test `predict` is compared with its validation time per image instead.

A trial's wall time runs from the moment its slot (1 CPU) became free — the study start or the completion of
the previous trial in that slot — to Tune's `on_trial_complete` on the driver; so it includes creating (or
resetting) the actor, the worker process start and the time after the trainable returns. Steps = the
steady-state train + validation + predict time; overhead = wall - steps. Parts: start-up (slot free ->
trainable entered: actor creation, process start, Ray set-up), TensorFlow import, data load, model build,
session reset, tracing, fit/predict call set-up (Keras data adapters, callbacks), pretext inputs, checkpoint
files, reports (tune.report incl. checkpoint upload and driver round-trip), pretext cache, after-return, other
(metrics, Python between steps). Keras starts each epoch's data iterator after `on_epoch_begin`, so that
start-up counts as steps; the pretext result written into a checkpoint counts as checkpoint files.

The demo study has 32 trials but only 2 run at a time, so with reuse_actors=True only 2 trials pay for a fresh
process. With fewer seeds that share is larger; `projected` rescales the start-up parts (start-up, TF
import, data load) to the preset's full grid: (sum of core overhead * N/n + F fresh start-ups + (N-F) reused
ones) / (the same for wall time), N = full grid, F = fresh processes. With `reuse+models` tracing is also a
per-process cost (once per architecture a worker meets), so its measured total is carried over unscaled.
`slot_time` is the study-level view: 1 - steps / (slots x Tuner.fit wall), which also counts Ray Tune's
start and slots left idle. Last line: `trial_overhead_share=<projected share of reuse+models>`, median over
repeats (target <= 0.15).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import os
import statistics
import time
from pathlib import Path

import benchutil

STARTUP_PARTS = ("start_up", "tf_import", "data_load")
# name -> (TuneConfig.reuse_actors, STUDY_MODEL_CACHE in the workers); the first is the project's default
SETTINGS = {
    "reuse+models": (True, "4"),
    "reuse": (True, "0"),
    "fresh": (False, "0"),
}
PARTS = (
    "start_up",
    "tf_import",
    "data_load",
    "model_build",
    "session_reset",
    "tracing",
    "call_setup",
    "pretext_inputs",
    "ckpt_files",
    "report",
    "pretext_cache",
    "after_return",
    "other",
)


# ------------------------------------------------------------------------------------------ worker side
def _n_images(x) -> int:
    """Images in an array, a list of batches or a batched tf.data dataset (what the phases predict on)."""
    if isinstance(x, list):
        return sum(int(b.shape[0]) for b in x)
    if hasattr(x, "__len__") and not hasattr(x, "element_spec"):
        return len(x)
    total = 0
    for batch in x:
        first = batch[0] if isinstance(batch, tuple) else batch
        total += int(first.shape[0])
    return total


def instrumented(probe_dir: str, model_cache: str):
    """A Ray Tune function trainable running `two_stage_trial(config)` with timers; each trial writes its
    record to `probe_dir/<trial id>.json`. Defined in the script, so Ray pickles it by value to the
    workers. `model_cache`: the worker's `STUDY_MODEL_CACHE` (set before the trial, read per phase)."""

    def two_stage_trial_timed(config):
        os.environ["STUDY_MODEL_CACHE"] = model_cache
        return _instrumented_trial(config, probe_dir)

    return two_stage_trial_timed


def _instrumented_trial(config, out_dir: str):
    import json as _json
    import os as _os
    import time as _time

    entered = _time.time()
    count = int(_os.environ.get("BENCH_TRIALS_IN_PROCESS", "0"))
    _os.environ["BENCH_TRIALS_IN_PROCESS"] = str(count + 1)
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # what two_stage_trial sets before importing TF
    import psutil

    rec = {
        "pid": _os.getpid(),
        "first_in_process": count == 0,
        "process_created": psutil.Process().create_time(),
        "entered": entered,
    }
    t0 = _time.perf_counter()
    import keras  # noqa: F401  (TensorFlow: the import two_stage_trial would pay)

    from study.train import phases as training  # noqa: F401

    rec["tf_import"] = _time.perf_counter() - t0
    from ray import tune

    from study.trainables import two_stage_trial

    rec["trial_id"] = tune.get_context().get_trial_id()
    probe = _Probe()
    try:
        with probe.installed():
            two_stage_trial(config)
    finally:
        rec["returned"] = _time.time()
        rec.update(probe.summary())
        Path(out_dir, f"{rec['trial_id']}.json").write_text(_json.dumps(rec))


class _Probe:
    """Exclusive timers by category, plus per-model call records of fit / predict."""

    def __init__(self):
        self.exclusive: dict[str, float] = {}
        self.stack: list[list] = []  # [category, start, time spent in nested timers]
        self.fits: list[dict] = []
        self.predicts: list[dict] = []
        self.reports = 0
        self.checkpoints = 0
        self.last_nested = 0.0  # time in nested timers of the timer `_end` ended last

    # timers
    def _begin(self, category):
        self.stack.append([category, time.perf_counter(), 0.0])

    def _end(self):
        category, start, nested = self.stack.pop()
        elapsed = time.perf_counter() - start
        self.exclusive[category] = self.exclusive.get(category, 0.0) + elapsed - nested
        if self.stack:
            self.stack[-1][2] += elapsed
        self.last_nested = nested
        return elapsed

    def timed(self, category, fn):
        def wrapper(*args, **kwargs):
            self._begin(category)
            try:
                return fn(*args, **kwargs)
            finally:
                self._end()

        return wrapper

    def installed(self):
        import contextlib
        import threading
        from concurrent import futures

        import keras
        import ray.tune

        from study import trainables
        from study.tasks import registry as pretext
        from study.train import backend, models, pretext_phase
        from study.train import batches as train_batches
        from study.train import phases as training

        probe = self
        orig = {
            (keras.Model, "fit"): keras.Model.fit,
            (keras.Model, "predict"): keras.Model.predict,
            (trainables, "load_trial_data"): trainables.load_trial_data,
            (trainables, "_report_with_state"): trainables._report_with_state,
            (models, "build_encoder"): models.build_encoder,
            (models, "build_model"): models.build_model,
            (backend, "fresh_keras_state"): backend.fresh_keras_state,
            (pretext, "get_task"): pretext.get_task,
            (ray.tune, "report"): ray.tune.report,
            (training.PretextResult, "save"): training.PretextResult.save,
            (training.PretextResult, "load"): training.PretextResult.load.__func__,
            (futures.Future, "result"): futures.Future.result,
            (pretext_phase, "ThreadPoolExecutor"): pretext_phase.ThreadPoolExecutor,
        }
        # one fit per phase: its evaluations call the model's predict function through this helper
        has_predict_batches = hasattr(train_batches, "predict_batches")
        if has_predict_batches:
            orig[(train_batches, "predict_batches")] = train_batches.predict_batches
        trial_thread = threading.current_thread()

        class Hooks(keras.callbacks.Callback):
            """First in the callback list. Per epoch: training-step seconds (validation excluded) and
            validation seconds; between two epochs of one call (the caller's epoch-end work: evaluation,
            reports, checkpoints) a timer runs, so that this time is not taken for call set-up."""

            def __init__(self):
                super().__init__()
                self.t: dict[str, float] = {}
                self.train: list[float] = []
                self.val: list[float] = []
                self.between = False

            def _close_between(self):
                if self.between:
                    probe._end()
                    self.between = False

            def on_epoch_begin(self, epoch, logs=None):
                self._close_between()
                self.t["epoch_begin"] = time.perf_counter()
                self.val.append(0.0)

            def on_epoch_end(self, epoch, logs=None):
                self.train.append(time.perf_counter() - self.t["epoch_begin"] - self.val[-1])
                probe._begin("between_epochs")  # exclusive time lands in "other"
                self.between = True

            def on_train_end(self, logs=None):
                self._close_between()

            def on_test_begin(self, logs=None):
                self.t["test_begin"] = time.perf_counter()

            def on_test_end(self, logs=None):
                if self.val:
                    self.val[-1] += time.perf_counter() - self.t["test_begin"]

            def on_predict_begin(self, logs=None):
                self.t["predict_begin"] = time.perf_counter()

            def on_predict_end(self, logs=None):
                self.t["predict_end"] = time.perf_counter()

        def fit(model, x=None, y=None, *args, **kwargs):
            hooks = Hooks()
            kwargs["callbacks"] = [hooks, *(kwargs.get("callbacks") or [])]
            probe._begin("fit")
            try:
                return orig[(keras.Model, "fit")](model, x, y, *args, **kwargs)
            finally:
                hooks._close_between()
                # the call's own time: nested timers (reports, checkpoints, evaluations and the rest of
                # the work between epochs) are counted where they belong
                wall = probe._end() - probe.last_nested
                val = kwargs.get("validation_data")
                probe.fits.append(
                    {
                        "model": id(model),
                        "wall": wall,
                        "train": hooks.train,
                        "val": hooks.val,
                        "n_val": _n_images(val[0] if isinstance(val, tuple) else val)
                        if val is not None
                        else 0,
                    }
                )

        def predict(model, x, *args, **kwargs):
            hooks = Hooks()
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), hooks]
            probe._begin("predict")
            try:
                return orig[(keras.Model, "predict")](model, x, *args, **kwargs)
            finally:
                wall = probe._end()
                loop = hooks.t.get("predict_end", 0.0) - hooks.t.get("predict_begin", 0.0)
                probe.predicts.append({"model": id(model), "wall": wall, "loop": loop, "n": _n_images(x)})

        def predict_batches(model, batches):
            # the model's predict function called per batch: no set-up, the whole call is the loop
            probe._begin("predict")
            try:
                return orig[(train_batches, "predict_batches")](model, batches)
            finally:
                wall = probe._end() - probe.last_nested
                probe.predicts.append(
                    {"model": id(model), "wall": wall, "loop": wall, "n": _n_images(batches)}
                )

        def get_task(name):
            # run_pretext makes training pairs one epoch ahead in a background thread: only calls on the
            # trainable's own thread (validation pairs) are timed here; its waits for the background
            # thread are timed through Future.result below.
            task = orig[(pretext, "get_task")](name)
            timed = probe.timed("pretext_inputs", task.make_batch)

            def make_batch(*args, **kwargs):
                if threading.current_thread() is trial_thread:
                    return timed(*args, **kwargs)
                return task.make_batch(*args, **kwargs)

            return dataclasses.replace(task, make_batch=make_batch)

        class MarkingExecutor(futures.ThreadPoolExecutor):
            def submit(self, *args, **kwargs):
                future = super().submit(*args, **kwargs)
                future.pretext_inputs = True
                return future

        def result(future, *args, **kwargs):
            if not getattr(future, "pretext_inputs", False) or threading.current_thread() is not trial_thread:
                return orig[(futures.Future, "result")](future, *args, **kwargs)
            return probe.timed("pretext_inputs", orig[(futures.Future, "result")])(future, *args, **kwargs)

        def report(*args, **kwargs):
            probe.reports += 1
            probe.checkpoints += kwargs.get("checkpoint") is not None
            return probe.timed("report", orig[(ray.tune, "report")])(*args, **kwargs)

        def save(result, directory):
            # inside _report_with_state the pretext result is written into a checkpoint, else into the cache
            inside_ckpt = bool(probe.stack) and probe.stack[-1][0] == "ckpt_files"
            category = "ckpt_files" if inside_ckpt else "pretext_cache"
            return probe.timed(category, orig[(training.PretextResult, "save")])(result, directory)

        def load(cls, directory):
            return probe.timed("pretext_cache", orig[(training.PretextResult, "load")])(cls, directory)

        replacements = {
            (keras.Model, "fit"): fit,
            (keras.Model, "predict"): predict,
            (trainables, "load_trial_data"): self.timed("data_load", trainables.load_trial_data),
            (trainables, "_report_with_state"): self.timed("ckpt_files", trainables._report_with_state),
            (models, "build_encoder"): self.timed("model_build", models.build_encoder),
            (models, "build_model"): self.timed("model_build", models.build_model),
            (backend, "fresh_keras_state"): self.timed("session_reset", backend.fresh_keras_state),
            (pretext, "get_task"): get_task,
            (ray.tune, "report"): report,
            (training.PretextResult, "save"): save,
            (training.PretextResult, "load"): classmethod(load),
            (futures.Future, "result"): result,
            (pretext_phase, "ThreadPoolExecutor"): MarkingExecutor,
        }
        if has_predict_batches:
            replacements[(train_batches, "predict_batches")] = predict_batches

        @contextlib.contextmanager
        def patched():
            for (owner, attr), value in replacements.items():
                setattr(owner, attr, value)
            try:
                self._begin("trial")
                try:
                    yield
                finally:
                    self._end()
            finally:
                for (owner, attr), value in orig.items():
                    setattr(owner, attr, classmethod(value) if attr == "load" else value)

        return patched()

    def summary(self) -> dict:
        steps, tracing, single = _steps_and_tracing(self.fits, self.predicts)
        return {
            "single_call_functions": single,
            "exclusive": self.exclusive,
            "steps": steps,
            "tracing": tracing,
            "call_setup": sum(f["wall"] - sum(f["train"]) - sum(f["val"]) for f in self.fits)
            + sum(p["wall"] - p["loop"] for p in self.predicts),
            "n_fits": len(self.fits),
            "n_predicts": len(self.predicts),
            "reports": self.reports,
            "checkpoints": self.checkpoints,
        }


def _steps_and_tracing(fits: list[dict], predicts: list[dict]) -> tuple[float, float, int]:
    """(steady-state step seconds, tracing seconds, functions called once) from per-call records, model by
    model: the epochs of every `fit` call of a model in order (one call per epoch or one per phase), and
    its predict calls. A function run only once (a 1-epoch pretext phase) cannot be split: all of it counts
    as steps."""
    steps = tracing = 0.0
    single = 0
    for model in {f["model"] for f in fits} | {p["model"] for p in predicts}:
        f = [x for x in fits if x["model"] == model]
        p = [x for x in predicts if x["model"] == model]
        val_per_image = None
        for key in ("train", "val"):
            values = [v for x in f for v in x[key]]
            if not values or not any(values):
                continue
            trace = max(0.0, values[0] - statistics.median(values[1:])) if len(values) > 1 else 0.0
            single += len(values) == 1
            tracing += trace
            steps += sum(values) - trace
            if key == "val" and len(values) > 1 and f[-1]["n_val"]:
                val_per_image = statistics.median(values[1:]) / f[-1]["n_val"]
        loops = [x["loop"] for x in p]
        if len(loops) > 1:
            trace = max(0.0, loops[0] - statistics.median(loops[1:]))
        elif loops and val_per_image is not None:  # one predict (pretext test set): compare with validation
            trace = max(0.0, loops[0] - p[0]["n"] * val_per_image)
        else:
            trace = 0.0
            single += len(loops) == 1
        tracing += trace
        steps += sum(loops) - trace
    return steps, tracing, single


# ------------------------------------------------------------------------------------------ driver side
def run_one(preset, setting: str, storage: Path, name: str) -> tuple[list[dict], float, int]:
    """Run the grid once with one of `SETTINGS`; (per-trial records with driver times, Tuner.fit wall
    seconds, slots)."""
    reuse, model_cache = SETTINGS[setting]
    from ray import tune

    from study.run import runner
    from study.run.results import collect_results
    from study.search_spaces import grid_space
    from study.spec.resolve import validate_study

    run_dir = storage / name
    run_dir.mkdir(parents=True)
    probe_dir = run_dir / "probe"
    probe_dir.mkdir()
    preset = preset.replace(base=preset.base.replace(pretext_cache_dir=str(run_dir / "pretext_cache")))
    validate_study(preset)

    events: dict[str, dict[str, float]] = {}

    class Times(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            events.setdefault(trial.trial_id, {})["start"] = time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            events.setdefault(trial.trial_id, {})["complete"] = time.time()

        def on_trial_error(self, iteration, trials, trial, **info):
            events.setdefault(trial.trial_id, {})["complete"] = time.time()

    # runner.tuner_configs takes the run directory as a Path (older runner) or as a location string
    import inspect

    second = list(inspect.signature(runner.tuner_configs).parameters)[1]
    tune_config, run_config = runner.tuner_configs(preset, str(run_dir) if second == "run_uri" else run_dir)
    tune_config = dataclasses.replace(tune_config, reuse_actors=reuse)
    run_config = dataclasses.replace(run_config, callbacks=[Times()], verbose=0)
    trainable = tune.with_resources(
        instrumented(str(probe_dir), model_cache),
        {"cpu": preset.cpus_per_trial, "gpu": preset.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=grid_space(preset),
        tune_config=tune_config,
        run_config=run_config,
    )
    t0 = time.time()
    grid = tuner.fit()
    wall = time.time() - t0
    results, _, errors = collect_results(grid, preset)
    if errors or not (results["status"] == "ok").all():
        raise RuntimeError(f"trials failed: {errors or results[results['status'] != 'ok']}")
    import ray

    slots = int(ray.cluster_resources().get("CPU", 1) // preset.cpus_per_trial)
    if preset.max_concurrent_trials:
        slots = min(slots, preset.max_concurrent_trials)
    records = []
    for path in probe_dir.glob("*.json"):
        rec = json.loads(path.read_text())
        rec.update(events[rec["trial_id"]])
        records.append(rec)
    _assign_slots(records, t0, slots)
    return records, wall, slots


def _assign_slots(records: list[dict], t0: float, slots: int) -> None:
    """Set rec["slot_free"]: when the slot the trial ran in became free (study start or a completion)."""
    free = [t0] * slots
    heapq.heapify(free)
    timeline = sorted(
        [(r["start"], 1, i) for i, r in enumerate(records)]
        + [(r["complete"], 0, i) for i, r in enumerate(records)]
    )
    for t, is_start, i in timeline:
        if is_start:
            records[i]["slot_free"] = heapq.heappop(free) if free else t
        else:
            heapq.heappush(free, t)


def breakdown(rec: dict) -> dict[str, float]:
    """Seconds per overhead part, `wall`, `steps` and `overhead` of one trial."""
    ex = rec["exclusive"]
    parts = {
        "start_up": rec["entered"] - rec["slot_free"],
        "tf_import": rec["tf_import"],
        "data_load": ex.get("data_load", 0.0),
        "model_build": ex.get("model_build", 0.0),
        "session_reset": ex.get("session_reset", 0.0),
        "tracing": rec["tracing"],
        "call_setup": rec["call_setup"],
        "pretext_inputs": ex.get("pretext_inputs", 0.0),
        "ckpt_files": ex.get("ckpt_files", 0.0),
        "report": ex.get("report", 0.0),
        "pretext_cache": ex.get("pretext_cache", 0.0),
        "after_return": rec["complete"] - rec["returned"],
    }
    # fit + predict time = steps + tracing + call set-up exactly (see _steps_and_tracing); the rest of the
    # trainable's time is in the timed parts or "other"
    in_trainable = rec["returned"] - rec["entered"] - rec["tf_import"]
    accounted = sum(v for k, v in parts.items() if k not in ("start_up", "after_return", "tf_import"))
    parts["other"] = in_trainable - accounted - rec["steps"]
    wall = rec["complete"] - rec["slot_free"]
    return {**parts, "wall": wall, "steps": rec["steps"], "overhead": wall - rec["steps"]}


def shares(records: list[dict], full_trials: int, fixed_tracing: bool) -> dict[str, float]:
    """Measured and projected overhead shares of one study.

    Projection to `full_trials`: per-trial costs scale with the number of trials; start-up parts are paid
    once per fresh process (as many as measured, one per slot, when workers are reused); with
    `fixed_tracing` (reused workers keeping compiled models) tracing is paid once per process and
    architecture, so its measured total is kept as it is.
    """
    rows = [(r, breakdown(r)) for r in records]
    wall = sum(b["wall"] for _, b in rows)
    over = sum(b["overhead"] for _, b in rows)
    start = [sum(b[p] for p in STARTUP_PARTS) for _, b in rows]
    fresh = [s for (r, _), s in zip(rows, start) if r["first_in_process"]]
    reused = [s for (r, _), s in zip(rows, start) if not r["first_in_process"]]
    n, f = len(rows), len(fresh)
    scale = full_trials / n
    # fresh processes: as many as measured when every trial is fresh, else the same count (one per slot)
    f_full = full_trials if not reused else f
    reused_mean = statistics.mean(reused) if reused else 0.0
    fixed_full = f_full * statistics.mean(fresh) + (full_trials - f_full) * reused_mean
    fixed = sum(start)
    if fixed_tracing:
        tracing = sum(b["tracing"] for _, b in rows)
        fixed, fixed_full = fixed + tracing, fixed_full + tracing
    core_over, core_wall = over - fixed, wall - fixed
    return {
        "measured": over / wall,
        "projected": (core_over * scale + fixed_full) / (core_wall * scale + fixed_full),
        "trials": n,
        "fresh": f,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per study (the demo has 9)")
    parser.add_argument("--repeats", type=int, default=3, help="studies per setting")
    parser.add_argument("--quick", action="store_true", help="smoke preset, 1 seed, 1 repeat")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--records", type=Path, help="also write every trial's record (JSON list) here")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.seeds, args.repeats = "smoke", 1, 1

    tmp = benchutil.use_temp_cache("trial-overhead-")
    # as study.run.runner.init_ray, which run_study uses
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    from study.run import runner
    from study.spec.presets import get_preset

    full = get_preset(args.preset)
    preset = full.with_seeds(args.seeds)
    full_trials = len(full.trial_configs())
    runner.prepare_data(preset)  # synthetic lesions + decoded cache, on the driver, before any timing
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(
        f"preset={preset.name} seeds={args.seeds} trials/study={len(preset.trial_configs())} "
        f"(full grid {full_trials}) cpus={os.cpu_count()} repeats={args.repeats}",
        flush=True,
    )
    names = args.settings
    per_setting: dict[str, list[dict]] = {k: [] for k in names}
    share_runs: dict[str, list[dict]] = {k: [] for k in names}
    walls: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.repeats):
        # rotate the order so that no setting always runs first (machine state drifts)
        for setting in names[r % len(names) :] + names[: r % len(names)]:
            records, wall, slots = run_one(preset, setting, tmp / "runs", f"r{r}-{setting}")
            per_setting[setting] += records
            reuse, cache = SETTINGS[setting]
            s = shares(records, full_trials, fixed_tracing=reuse and cache != "0")
            # the study as a whole: slot time (slots x study wall) not spent in steps, incl. idle slots
            s["slot_time"] = 1 - sum(breakdown(rec)["steps"] for rec in records) / (slots * wall)
            share_runs[setting].append(s)
            walls[setting].append(wall)
            print(
                f"repeat {r + 1} {setting:<13}: study wall {wall:6.1f} s, {s['trials']} trials "
                f"({s['fresh']} in a fresh process), overhead share measured {s['measured']:.3f}, "
                f"projected to {full_trials} trials {s['projected']:.3f}, of slot time {s['slot_time']:.3f}",
                flush=True,
            )
    ray.shutdown()
    if args.records:
        dump = [
            {"setting": k, **r, "breakdown": breakdown(r)} for k, recs in per_setting.items() for r in recs
        ]
        args.records.write_text(json.dumps(dump, indent=1, default=str))

    print(
        "\nsettings: reuse+models = reuse_actors=True and compiled models kept (the default); reuse = "
        "reuse_actors=True, STUDY_MODEL_CACHE=0; fresh = reuse_actors=False"
    )
    print("per trial, seconds, min / median / max over all trials of the setting")
    print(f"{'part':<16}" + "".join(f"{k:>26}" for k in names))
    rows = {k: [breakdown(r) for r in recs] for k, recs in per_setting.items()}
    for part in ("wall", "steps", "overhead", *PARTS):
        cells = [benchutil.fmt_mmm([b[part] for b in rows[k]], "6.2f") for k in names]
        print(f"{part:<16}" + "".join(f"{c:>26}" for c in cells))
    print("per trial in a reused process (not the first of its worker), median seconds")
    later = {k: [b for r, b in zip(per_setting[k], rows[k]) if not r["first_in_process"]] for k in names}
    for part in ("wall", "steps", "overhead", *PARTS):
        cells = [f"{benchutil.median([b[part] for b in later[k]]):6.2f}" for k in names]
        print(f"{part:<16}" + "".join(f"{c:>26}" for c in cells))
    print("share of total trial wall time")
    for part in ("overhead", *PARTS):
        cells = [sum(b[part] for b in rows[k]) / sum(b["wall"] for b in rows[k]) for k in names]
        print(f"{part:<16}" + "".join(f"{c:>26.3f}" for c in cells))
    for k in names:
        fresh = [b for r, b in zip(per_setting[k], rows[k]) if r["first_in_process"]]
        later = [b for r, b in zip(per_setting[k], rows[k]) if not r["first_in_process"]]
        for label, group in (("fresh process", fresh), ("reused process", later)):
            if group:
                print(
                    f"{k:<13} {label:<15}: {len(group):>3} trials, median wall "
                    f"{statistics.median(b['wall'] for b in group):6.2f} s, overhead "
                    f"{statistics.median(b['overhead'] for b in group):6.2f} s"
                )
    summary = {}
    for k in names:
        for kind in ("measured", "projected", "slot_time"):
            values = [s[kind] for s in share_runs[k]]
            summary[(k, kind)] = benchutil.median(values)
            print(
                f"{k:<13} overhead share {kind:<9} (min / median / max over studies): "
                f"{benchutil.fmt_mmm(values, '.3f')}"
            )
        print(f"{k:<13} study wall s: {benchutil.fmt_mmm(walls[k], '.1f')}")
    single = sum(r["single_call_functions"] for recs in per_setting.values() for r in recs)
    if single:
        print(
            f"note: {single} model functions ran only once (1-epoch phases, e.g. the smoke preset's "
            "pretext); their tracing is counted as steps, so the overhead above is an underestimate"
        )
    headlines = (
        ("trial_overhead_share_fresh_workers", "fresh", "projected"),
        ("trial_overhead_share_reuse_without_model_cache", "reuse", "projected"),
        ("trial_overhead_share_measured", "reuse+models", "measured"),
        ("trial_overhead_share", "reuse+models", "projected"),
    )
    for label, setting, kind in headlines:
        if (setting, kind) in summary:
            print(f"{label}={summary[(setting, kind)]:.3f}")


if __name__ == "__main__":
    main()
