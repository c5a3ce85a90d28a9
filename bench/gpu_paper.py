"""The paper preset's cost on the machine at hand: ResNet50 at 224 px through the project's own training path.

Run from the repository root on a GPU machine (about 5-10 minutes on one modern GPU), on the Keras backend
`KERAS_BACKEND` names (TensorFlow by default; JAX or PyTorch where TensorFlow is not installed: this script,
the phases and the data need neither TensorFlow nor Ray):

    .venv/bin/python bench/gpu_paper.py                       # 512 images, 3 epochs per case
    KERAS_BACKEND=jax python bench/gpu_paper.py               # the same on JAX
    KERAS_BACKEND=jax python bench/gpu_paper.py --quick       # CPU-sized: 32 px, 32 images, batch 16
    .venv/bin/python bench/gpu_paper.py --images 1024 --epochs 4
    .venv/bin/python bench/gpu_paper.py --image-size 32 --images 32 --epochs 2   # a CPU smoke run

Per precision (float32, then Keras `mixed_bfloat16` as the paper preset uses), it runs three phases through
`training.run_pretext` / `training.run_finetune` with the paper preset's model settings (ResNet50, batch 32;
random init: the same compute as the preset's ImageNet weights, and no file to fetch) on random-pixel images:
the rotation pretext (regression head), the missing-patch pretext (image head with its decoder; corruption
removal costs the same on the GPU) and the fine-tune. The first epoch of each (tracing, cuDNN autotuning) is
dropped. Images/s counts the training images of an epoch over
the epoch's wall time (`on_epoch` timestamps; for the fine-tune its `fit` seconds, validation and test
prediction reported apart).

From those rates it prints what one paper-preset trial would take per arm, with BENCHMARKS.md's dataset
assumption (9,600 training images, 1,000 test, validation 0.2, 100 + 100 epochs) and no fixed costs.

Every figure is labelled with the device it ran on. On a machine without a GPU the figures are CPU figures:
`measured_on=cpu` says so, and the paper preset's runtime note stays an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import benchutil

PAPER_TRAIN, PAPER_TEST, VAL_FRACTION, PAPER_EPOCHS = 9600, 1000, 0.2, 100


def device_name() -> str:
    """'cpu', or the first GPU's name as the Keras backend reports it (`study.train.backend`)."""
    from study.train import backend

    device = backend.device_in_use(1)["device"]
    return "cpu" if device == "CPU" else str(device)


def timed_epochs(run, n_epochs: int) -> list[float]:
    """Wall seconds of each epoch of `run(on_epoch)` after the first (timestamps taken in `on_epoch`)."""
    stamps: list[float] = []

    def on_epoch(epoch, logs, *rest):
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    run(on_epoch)
    marks = [start, *stamps]
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    assert len(seconds) == n_epochs, f"expected {n_epochs} epochs, got {len(seconds)}"
    return seconds[1:]


def measure(
    size: int, n_images: int, epochs: int, mixed: bool, batch: int = 32
) -> dict[str, dict[str, float]]:
    """Per phase: training images/s (median over timed epochs) and, for the fine-tune, evaluation seconds."""
    from study.spec.config import TrialConfig
    from study.train import phases as training

    data = benchutil.synthetic_data(size, n_images, n_test=max(32, n_images // 4))
    trial = TrialConfig(
        encoder="resnet50",
        image_size=size,
        weights="random",
        mixed_precision=mixed,
        batch_size=batch,
        pretext_batch_size=batch,
        pretext_epochs=epochs,
        finetune_epochs=epochs,
        patiences=(0,),
        threads=os.cpu_count() or 1,
        seed=0,
    )
    out: dict[str, dict[str, float]] = {}
    for task in ("rotation", "missing_patch"):
        t = trial.replace(task=task)
        seconds = timed_epochs(lambda cb, t=t: training.run_pretext(t, data, on_epoch=cb), epochs)
        out[f"pretext_{task}"] = {"img_s": n_images / benchutil.median(seconds), "epochs_timed": len(seconds)}
    result = training.run_finetune(trial, data)
    timed = result.timings[1:]
    fit = [t["fit_s"] for t in timed]
    out["finetune"] = {
        "img_s": len(result.train_index) / benchutil.median(fit),
        "eval_s_per_epoch": benchutil.median([t["eval_s"] for t in timed]),
        "eval_images": len(result.val_index) + len(data.test.images),
        "epochs_timed": len(timed),
    }
    return out


def paper_trial_hours(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    """Hours of one paper-preset trial per arm at the measured rates (training epochs; evaluation of the
    fine-tune scaled from the measured eval seconds per image; fixed start-up costs left out)."""
    n_fit = PAPER_TRAIN * (1 - VAL_FRACTION)
    ft = rates["finetune"]
    eval_per_image = ft["eval_s_per_epoch"] / ft["eval_images"]
    finetune_epoch = n_fit / ft["img_s"] + eval_per_image * (PAPER_TRAIN * VAL_FRACTION + PAPER_TEST)
    finetune = PAPER_EPOCHS * finetune_epoch
    pretext = {
        "rotation": PAPER_EPOCHS * n_fit / rates["pretext_rotation"]["img_s"],
        # corruption removal has the same image head as missing patch; its CPU-side swaps are overlapped
        "missing_patch": PAPER_EPOCHS * n_fit / rates["pretext_missing_patch"]["img_s"],
    }
    return {
        "baseline": finetune / 3600,
        "rotation": (pretext["rotation"] + finetune) / 3600,
        "missing_patch": (pretext["missing_patch"] + finetune) / 3600,
        "corruption": (pretext["missing_patch"] + finetune) / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=512, help="training images per epoch (after validation)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per phase; the first is not timed")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--batch", type=int, default=32, help="batch size of every phase (the paper preset's: 32)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a CPU-sized run of the same measurement: 32 px, 32 images, batch 16",
    )
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.images, args.epochs, args.batch = 32, 32, 2, 16
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first epoch is tracing and is not timed)")

    import keras

    from study.train import backend

    backend.configure(os.cpu_count() or 1)  # the threads `measure`'s phases run with, before anything starts
    device = device_name()
    print(
        f"device={device}  backend={backend.version()}  keras={keras.__version__}  "
        f"python={platform.python_version()}  image_size={args.image_size}  images={args.images}  "
        f"batch={args.batch}  epochs={args.epochs} (first not timed)"
    )
    figures: dict[str, object] = {
        "device": device,
        "measured_on": "cpu" if device == "cpu" else "gpu",
        "backend": backend.version(),
        "keras": keras.__version__,
    }
    for precision, mixed in (("float32", False), ("mixed_bfloat16", True)):
        rates = measure(args.image_size, args.images, args.epochs, mixed, args.batch)
        figures[precision] = rates
        for phase, r in rates.items():
            print(f"{precision:<15} {phase:<22} {r['img_s']:8.1f} img/s")
        if args.image_size == 224:
            hours = paper_trial_hours(rates)
            figures[f"{precision}_paper_trial_hours"] = hours
            print(
                f"{precision:<15} paper trial (9,600 images, 100+100 epochs, no fixed costs): "
                + ", ".join(f"{arm} {h:.2f} h" for arm, h in hours.items())
            )
    label = (
        "MEASURED on " + device if device != "cpu" else "CPU figures only: the GPU runtime stays an estimate"
    )
    print(f"measured_on={figures['measured_on']}  ({label})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
