"""Training throughput of the fine-tune phase (study/train/phases.py) next to a plain `model.fit`, side by side.

Run from the repository root (about 8 minutes on 2 CPU cores):

    .venv/bin/python bench/phase_throughput.py                 # 7 / 5 / 3 timed epochs per case
    .venv/bin/python bench/phase_throughput.py --repeats 5 --threads 2

Cases: the small encoder at 64 px (256 training images), ResNet50 at 64 px (128) and at 224 px (64).
Per case, two fine-tune runs through the project's path, `training.run_finetune` (one `model.fit` call per
epoch on a per-epoch permutation, then validation + test prediction and metrics), one in float32 and one
with `mixed_precision=True` (mixed_bfloat16). After each of our epochs, `on_epoch` trains plain
models — the same architecture (`models.build_model`), the same uint8 training arrays and batch size,
`model.fit(epochs=1)` with Keras' own shuffling — for one epoch each: a float32 one in both runs and a
mixed_bfloat16 one in the mixed run. Interleaving epoch by epoch exposes both sides to the same load on a
shared machine. The first epoch of every model (tracing) is dropped.

Columns are training images/s, min / median / max over the timed epochs: "ours train" times only the
`fit` call of our epoch, "ours epoch" adds our per-epoch validation + test evaluation (which plain Keras
does not do). A speed-up is the median over epochs of (ours train img/s) / (plain img/s) of the same epoch.
The last line, `phase_speedup_resnet50_224=<ours/plain>`, compares the project's CPU configuration
(mixed_bfloat16) with a plain float32 `model.fit` of the same model at 224 px.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import benchutil
import numpy as np

# (encoder, px, training images, timed epochs): more epochs where they are cheap, since single epochs on a
# shared 2-core machine swing by up to 2x.
CASES = (("small", 64, 256, 7), ("resnet50", 64, 128, 5), ("resnet50", 224, 64, 3))
BATCH_SIZE = 32


def measure(trial, data) -> dict[str, list[float]]:
    """Seconds per timed epoch: `ours_fit`, `ours_epoch`, `plain_float32` (+ `plain_mixed_bfloat16` when
    `trial.mixed_precision`), the plain models trained one epoch after each of our epochs."""
    import keras

    from study.train import models, splits
    from study.train import phases as training

    precisions = ("float32", "mixed_bfloat16") if trial.mixed_precision else ("float32",)
    plain: dict[str, keras.Model] = {}
    seconds: dict[str, list[float]] = {f"plain_{p}": [] for p in precisions}
    arrays: dict[str, np.ndarray] = {}
    val_rows = splits.validation_split(trial, data)[1]

    def plain_epochs(epoch, logs, save_state):
        if not plain:  # built here, after run_finetune's clear_session, on our training rows
            rows = np.setdiff1d(np.arange(len(data.train.labels)), val_rows)
            arrays["x"], arrays["y"] = data.train.images[rows], data.train.labels[rows].astype(np.float32)
            for p in precisions:
                encoder = models.build_encoder(
                    trial.encoder, trial.image_size, trial.encoder_widths, mixed_precision=p != "float32"
                )
                model = models.build_model(
                    "classification", encoder, mixed_precision=p != "float32", name=f"plain_{p}"
                )
                model.compile(optimizer=keras.optimizers.Adam(trial.lr), loss="binary_crossentropy")
                plain[p] = model
        for p, model in plain.items():
            start = time.perf_counter()
            model.fit(arrays["x"], arrays["y"], batch_size=trial.batch_size, epochs=1, verbose=0)
            seconds[f"plain_{p}"].append(time.perf_counter() - start)

    result = training.run_finetune(trial, data, on_epoch=plain_epochs)
    assert len(arrays["x"]) == len(result.train_index)
    timed = result.timings[1:]  # epoch 1 traces our train and predict functions
    seconds = {k: v[1:] for k, v in seconds.items()}  # and the plain models' first epoch theirs
    seconds["ours_fit"] = [t["fit_s"] for t in timed]
    seconds["ours_epoch"] = [t["fit_s"] + t["eval_s"] for t in timed]
    return seconds


def rates(n_images: int, seconds: list[float]) -> tuple[float, float, float]:
    """(min, median, max) images/s."""
    r = sorted(n_images / s for s in seconds)
    return r[0], statistics.median(r), r[-1]


def paired_speedup(ours: list[float], plain: list[float]) -> float:
    """Median over epochs of ours img/s / plain img/s = plain seconds / ours seconds, epoch by epoch."""
    return statistics.median(p / o for o, p in zip(ours, plain))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed epochs per model after 1 warm-up (default: 7, 5, 3 by case)",
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="TensorFlow intra-op threads"
    )
    args = parser.parse_args()

    from study.spec.config import TrialConfig
    from study.train import phases as training
    from study.train import splits

    training.configure_tensorflow(args.threads)
    print(
        f"fine-tune phase, training images/s (min / median / max over the timed epochs after "
        f"1 warm-up), threads={args.threads}, batch={BATCH_SIZE}"
    )
    print(
        f"{'case':<13} {'our precision':<15} {'n':>4} {'ep':>2}  {'ours train':>22}  {'ours epoch':>22}  "
        f"{'plain float32':>22}  {'plain mixed_bfloat16':>22}"
    )
    fmt = "{:6.1f} /{:6.1f} /{:6.1f}".format
    speedups: dict[str, float] = {}
    for encoder, size, n_train, repeats in CASES:
        repeats = args.repeats or repeats
        data = benchutil.synthetic_data(size, n_train)
        case = f"{encoder}_{size}"
        for mixed in (False, True):
            trial = TrialConfig(
                encoder=encoder,
                image_size=size,
                batch_size=BATCH_SIZE,
                lr=1e-4,
                finetune_epochs=repeats + 1,
                patiences=(0,),
                threads=args.threads,
                mixed_precision=mixed,
                seed=0,
            )
            s = measure(trial, data)
            n = len(splits.validation_split(trial, data)[0])
            cols = [
                fmt(*rates(n, s[k])) if k in s else "-"
                for k in ("ours_fit", "ours_epoch", "plain_float32", "plain_mixed_bfloat16")
            ]
            print(
                f"{encoder + '@' + str(size):<13} {'mixed_bfloat16' if mixed else 'float32':<15} {n:>4} "
                f"{repeats:>2}  " + "  ".join(f"{c:>22}" for c in cols),
                flush=True,
            )
            if mixed:
                speedups[f"{case}_bf16_vs_plain_bf16"] = paired_speedup(
                    s["ours_fit"], s["plain_mixed_bfloat16"]
                )
                speedups[f"{case}_bf16_vs_plain_fp32"] = paired_speedup(s["ours_fit"], s["plain_float32"])
            else:
                speedups[f"{case}_fp32_vs_plain_fp32"] = paired_speedup(s["ours_fit"], s["plain_float32"])
    for name, value in speedups.items():
        print(f"phase_speedup_{name}={value:.3f}")
    print(f"phase_speedup_resnet50_224={speedups['resnet50_224_bf16_vs_plain_fp32']:.3f}")


if __name__ == "__main__":
    main()
