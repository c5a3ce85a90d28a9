"""Memory: peak resident memory of one trial per encoder and image size, and how many trials fit in 24 GiB.

Run from the repository root (about 8 minutes on 2 CPU cores; `--quick` about 1 minute):

    .venv/bin/python bench/memory.py                   # all configurations, 2 repeats
    .venv/bin/python bench/memory.py --quick           # small encoder only, 1 repeat, tiny data
    .venv/bin/python bench/memory.py --repeats 3 --dataset-train-images 1331

Each configuration runs one trial's work in a fresh Python process (so the peak is that trial's alone), the
way a Ray worker runs it: `import ray.tune` (the worker's own libraries), TensorFlow set-up
(`training.configure_tensorflow`), the decoded dataset loaded from the cache (`trainables.load_trial_data`;
the parent generates and decodes the synthetic lesions beforehand, as the study driver does), the pretext
phase with an image task (`missing_patch`: the decoder head makes it the largest arm; `--task` to change),
then the fine-tune phase with its checkpoint state written after every epoch (`save_state`), 1 pretext and
2 fine-tune epochs. The child reports its peak RSS (VmHWM, exact; `ru_maxrss` would include the parent's,
which a child inherits across fork + exec) after each stage; the parent also samples
the child's RSS and PSS every 0.5 s (PSS splits shared pages such as TensorFlow's libraries between the
processes mapping them, so concurrent trials really need less than their RSS sum; sampled peaks can miss
short spikes).

| configuration  | settings                                                                          |
|----------------|-----------------------------------------------------------------------------------|
| small_32       | the demo preset's trial: widths 8-64, 32 px, 500+200 lesions, batch 32, 1 thread  |
| small_64       | the same at 64 px                                                                 |
| resnet50_224   | the paper preset's settings (batch 32, mixed_bfloat16, 4 threads), 40+8 lesions   |
| small_224_n64  | widths 16-128 at 224 px, 64 training images  } the data-dependent slope           |
| small_224_n512 | the same with 512 training images            }                                    |

Per-trial memory grows with the dataset (the decoded uint8 arrays plus the per-epoch copies: training rows,
pretext inputs and targets, the permuted epoch, Keras' tensor copy). The slope in bytes per training image
at 224 px comes from the two small_224 runs (the copies do not depend on the encoder) and extrapolates the
ResNet50 trial to `--dataset-train-images` (default 1331, the training split of ../shared/data/isic9_binary).

Trials per 24 GiB = floor((24 GiB - Ray's per-machine processes - `--reserve-gib` for the OS and the driver)
/ peak RSS per trial). Ray's processes (GCS, raylet, ... without idle workers) are measured in a child that
runs `ray.init`. Last line: `trials_per_24gib_resnet50_224=N` (extrapolated to the dataset size above).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchutil

GIB = 2**30
MIB = 2**20

# The data-slope runs: small encoder at 224 px with TrialConfig's default widths. (The demo's widths 8-64
# crash TensorFlow's oneDNN kernels at 224 px here — heap corruption in the first training step, fine at
# 192 px, with stem width 16, or with TF_ENABLE_ONEDNN_OPTS=0.)
SLOPE = {"image_size": 224, "encoder_widths": (16, 32, 64, 128), "synth_n_test": 20, "threads": 2}

# name -> (preset, TrialConfig changes); n_train/n_test are the synthetic lesions generated
CONFIGS = {
    "small_32": ("demo", {}),
    "small_64": ("demo", {"image_size": 64}),
    "resnet50_224": ("paper", {"synth_n_train": 40, "synth_n_test": 8}),
    "small_224_n64": ("demo", {**SLOPE, "synth_n_train": 80}),
    "small_224_n512": ("demo", {**SLOPE, "synth_n_train": 640}),
}
QUICK = {  # same names, fewer images (the table prints the real counts)
    "small_32": ("demo", {"synth_n_train": 100, "synth_n_test": 40}),
    "small_224_n64": ("demo", {**SLOPE, "synth_n_train": 40, "synth_n_test": 10}),
    "small_224_n512": ("demo", {**SLOPE, "synth_n_train": 160, "synth_n_test": 10}),
}


def trial_for(name: str, table: dict, task: str):
    from study.spec.presets import get_preset

    preset, changes = table[name]
    base = get_preset(preset).base
    # data_path None: synthetic lesions; 1 pretext + 2 fine-tune epochs are enough to reach the peak
    return base.replace(task=task, pretext_epochs=1, finetune_epochs=2, **changes)


# ------------------------------------------------------------------------------------------ children
def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM from /proc/self/status (Linux), which starts afresh at exec.
    (`getrusage(RUSAGE_SELF).ru_maxrss` does not: a child inherits its parent's value across fork + exec.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux, bytes on macOS


def child_trial(config_json: str) -> dict:
    import psutil

    stages: list[tuple[str, int, int]] = []

    def mark(stage: str) -> None:
        stages.append((stage, peak_rss(), psutil.Process().memory_info().rss))

    mark("python + numpy")
    import ray.tune  # noqa: F401  (loaded in every Ray worker)

    mark("ray.tune imported")
    from study.spec.config import TrialConfig
    from study.train import phases as training
    from study.train import splits
    from study.trainables import load_trial_data

    trial = TrialConfig.from_dict(json.loads(config_json))
    training.configure_tensorflow(trial.threads)
    mark("tensorflow set up")
    data = load_trial_data(trial)
    mark("data loaded")
    weights = None
    if trial.task != "none":
        result = training.run_pretext(trial, data)
        weights = result.encoder_weights
        mark("pretext phase")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        training.run_finetune(
            trial, data, encoder_weights=weights, on_epoch=lambda e, logs, save: save(Path(tmp) / f"e{e}")
        )
    mark("fine-tune phase")
    return {"stages": stages, "n_train_images": len(splits.validation_split(trial, data)[0])}


def child_ray() -> dict:
    """RSS and PSS of the processes `ray.init` starts on this machine (idle workers excluded)."""
    import psutil
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    time.sleep(5)
    me = psutil.Process()
    rows = []
    for p in me.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if "ray::IDLE" in cmd or p.name().startswith("ray::IDLE"):
                continue
            info = p.memory_full_info()
            name = p.name()
            if name.startswith("python"):  # name the script: monitor.py, dashboard.py, log_monitor.py
                scripts = [Path(a).name for a in p.cmdline()[1:] if a.endswith(".py")]
                name = scripts[0] if scripts else name
            rows.append((name, info.rss, info.pss))
        except psutil.Error:
            continue
    driver = me.memory_full_info()
    ray.shutdown()
    return {"processes": rows, "driver_rss": driver.rss, "driver_pss": driver.pss}


# ------------------------------------------------------------------------------------------ parent
def run_sampled(argv: list[str], timeout: float) -> tuple[dict, int, int]:
    """Run a child, sampling its RSS / PSS every 0.5 s; (result, sampled peak RSS, sampled peak PSS)."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    peak_rss = peak_pss = 0
    started = time.monotonic()
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            info = ps.memory_full_info()
            peak_rss, peak_pss = max(peak_rss, info.rss), max(peak_pss, info.pss)
        except psutil.Error:
            pass
        if time.monotonic() - started > timeout:
            proc.kill()
        time.sleep(0.5)
    out, err = proc.communicate()
    for line in reversed(out.splitlines()):
        if line.startswith(benchutil.RESULT_PREFIX) and proc.returncode == 0:
            return json.loads(line[len(benchutil.RESULT_PREFIX) :]), peak_rss, peak_pss
    tail = "\n".join((out + "\n" + err).strip().splitlines()[-20:])
    raise RuntimeError(f"child {argv[1:]} failed (exit {proc.returncode}):\n{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    parser.add_argument("--quick", action="store_true", help="small encoder, tiny data, 1 repeat")
    parser.add_argument("--configs", nargs="+", default=None, help=f"subset of {list(CONFIGS)}")
    parser.add_argument("--task", default="missing_patch", help="pretext task of the measured trial")
    parser.add_argument("--dataset-train-images", type=int, default=1331, help="extrapolate to this many")
    parser.add_argument("--reserve-gib", type=float, default=1.0, help="kept for the OS and the driver")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per child")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        benchutil.emit_result(child_ray() if args.child == "ray" else child_trial(args.child))
        return
    table = QUICK if args.quick else CONFIGS
    if args.quick:
        args.repeats = 1
    names = args.configs or list(table)
    benchutil.use_temp_cache("bench-memory-")

    from study.data import check_and_cache
    from study.data.trial_source import cache_dir, data_source

    script = os.path.abspath(__file__)
    print(f"peak memory per trial (MiB), min / median / max over {args.repeats} runs; task={args.task}")
    print(
        f"{'configuration':<16} {'train imgs':>10} {'peak RSS (VmHWM)':>24} {'sampled peak PSS':>24}  "
        "median peak RSS after each stage"
    )
    peaks: dict[str, float] = {}
    pss_peaks: dict[str, float] = {}
    n_images: dict[str, int] = {}
    for name in names:
        trial = trial_for(name, table, args.task)
        check_and_cache(data_source(trial), trial.image_size, cache_dir(trial))  # as the study driver does
        rss, pss, stages = [], [], []
        for _ in range(args.repeats):
            res, _, peak_pss = run_sampled([script, "--child", json.dumps(trial.to_dict())], args.timeout)
            rss.append(res["stages"][-1][1] / MIB)
            pss.append(peak_pss / MIB)
            stages.append(res["stages"])
            n_images[name] = res["n_train_images"]
        peaks[name], pss_peaks[name] = benchutil.median(rss), benchutil.median(pss)
        per_stage = ", ".join(
            f"{s[0]} {benchutil.median([run[i][1] / MIB for run in stages]):.0f}"
            for i, s in enumerate(stages[0])
        )
        print(
            f"{name:<16} {n_images[name]:>10} {benchutil.fmt_mmm(rss, '.0f'):>24} "
            f"{benchutil.fmt_mmm(pss, '.0f'):>24}  {per_stage}",
            flush=True,
        )

    ray_res, _, _ = run_sampled([script, "--child", "ray"], 120)
    ray_rss = sum(r[1] for r in ray_res["processes"]) / MIB
    ray_pss = sum(r[2] for r in ray_res["processes"]) / MIB
    names_ray = ", ".join(f"{r[0]} {r[1] / MIB:.0f}" for r in sorted(ray_res["processes"]))
    print(f"Ray per-machine processes: RSS {ray_rss:.0f} MiB, PSS {ray_pss:.0f} MiB (RSS MiB: {names_ray})")
    budget = 24 * 1024 - ray_rss - args.reserve_gib * 1024
    print(f"budget for trials on 24 GiB: {budget:.0f} MiB (24 GiB - Ray - {args.reserve_gib:g} GiB reserve)")
    for name in names:
        print(
            f"trials_per_24gib_{name}_measured={math.floor(budget / peaks[name])} "
            f"(by RSS; by sampled PSS {math.floor(budget / max(pss_peaks[name], 1))})"
        )
    slope = None
    if "small_224_n64" in peaks and "small_224_n512" in peaks:
        dn = n_images["small_224_n512"] - n_images["small_224_n64"]
        slope = (peaks["small_224_n512"] - peaks["small_224_n64"]) / dn  # MiB per training image
        per_copy = 224 * 224 * 3 / MIB
        print(
            f"data slope at 224 px: {slope * 1024:.0f} KiB per training image "
            f"(= {slope / per_copy:.1f} copies of a 224 px uint8 image)"
        )
    headline = "nan"
    if "resnet50_224" in peaks:
        measured = peaks["resnet50_224"]
        if slope is not None:
            extra = max(0.0, slope) * (args.dataset_train_images - n_images["resnet50_224"])
            projected = measured + extra
            print(
                f"resnet50_224 peak RSS extrapolated to {args.dataset_train_images} training images: "
                f"{measured:.0f} + {extra:.0f} = {projected:.0f} MiB"
            )
            headline = str(math.floor(budget / projected))
        else:
            headline = str(math.floor(budget / measured))
    print(f"trials_per_24gib_resnet50_224={headline}")


if __name__ == "__main__":
    main()
