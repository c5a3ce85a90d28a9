"""ResNet50 training images/s at 224 px, TensorFlow vs JAX, float32 vs mixed bfloat16, side by side in one run.

Run from the repository root (a few minutes on an idle 2-core CPU with the defaults; far longer under load):

    .venv/bin/python bench/backend_throughput.py                 # 32 images, batch 16, 1 warm-up + 2 timed epochs
    .venv/bin/python bench/backend_throughput.py --rounds 2      # every case twice, alternating
    .venv/bin/python bench/backend_throughput.py --quick         # CPU smoke: 32 px, 16 images, batch 8

Each case is one fresh interpreter (`KERAS_BACKEND` set for it; threads as `study.train.backend.configure`
sets them for a trial with this machine's cores) that builds the fine-tune phase's model — the project's
ResNet50 encoder (`models.trial_encoder`, random init) with the classification head (`models.build_model`), in
float32 or under Keras' `mixed_bfloat16` — compiles it as the fine-tune does (Adam, binary cross-entropy) and
trains it with `model.fit` on uint8 random-pixel arrays: one warm-up step (tracing on TensorFlow, compilation on
JAX), then `--epochs` timed epochs of `--images` images. The cases alternate backends within each precision
(TensorFlow fp32, JAX fp32, TensorFlow bf16, JAX bf16, then the next round), so both backends see similar load
on a shared machine.

Printed: per case, training images/s over wall time (min / median / max over its timed epochs, pooled over
rounds) and images per CPU-second of the process (steadier than wall time when other jobs share the cores,
though it counts threads that spin while waiting), then the ratios of medians, and last
`resnet50_<px>_jax_vs_tf_fp32=<ratio>` (wall time; > 1: JAX faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import benchutil

BACKENDS = ("tensorflow", "jax")
PRECISIONS = (("float32", False), ("mixed_bfloat16", True))


def child(size: int, n_images: int, epochs: int, batch: int, mixed: bool) -> dict:
    """Wall and process-CPU seconds of each timed training epoch, and the backend's version, in this interpreter."""
    import keras
    import numpy as np

    from study.spec.config import TrialConfig
    from study.train import backend, models

    threads = os.cpu_count() or 1
    backend.configure(threads)
    backend.fresh_keras_state(0)
    trial = TrialConfig(
        encoder="resnet50", image_size=size, mixed_precision=mixed, batch_size=batch, threads=threads
    )
    model = models.build_model(
        "classification", models.trial_encoder(trial, "random", None), mixed_precision=mixed
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    y = (np.arange(n_images) % 2).astype(np.float32)[:, None]
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # traces / compiles the step
    wall, cpu = [], []
    for _ in range(epochs):
        w, c = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"backend": backend.version(), "keras": keras.__version__, "wall_s": wall, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=32, help="images per timed epoch (a multiple of --batch)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per case, after 1 warm-up step")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="times every case runs, alternating")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 32 px, 16 images, batch 8")
    parser.add_argument("--child", choices=[p for p, _ in PRECISIONS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.images, args.batch = 32, 16, 8
    if args.images % args.batch or args.epochs < 1 or args.rounds < 1:
        parser.error(
            "--images must be a multiple of --batch (a partial batch retraces); --epochs, --rounds >= 1"
        )
    if args.child:
        mixed = args.child != "float32"
        benchutil.emit_result(child(args.image_size, args.images, args.epochs, args.batch, mixed))
        return

    script = os.path.abspath(__file__)
    shape = ["--image-size", str(args.image_size), "--images", str(args.images)]
    shape += ["--epochs", str(args.epochs), "--batch", str(args.batch)]
    print(
        f"ResNet50 + classification head, {args.image_size} px, batch {args.batch}: {args.epochs} timed epoch(s) "
        f"of {args.images} images per case after 1 warm-up step, {args.rounds} round(s); "
        f"python={platform.python_version()} cores={os.cpu_count()}",
        flush=True,
    )
    wall: dict[tuple[str, str], list[float]] = {}
    per_cpu: dict[tuple[str, str], list[float]] = {}
    versions: dict[str, str] = {}
    for _ in range(args.rounds):
        for precision, _mixed in PRECISIONS:
            for name in BACKENDS:
                out = benchutil.run_child([script, "--child", precision, *shape], env={"KERAS_BACKEND": name})
                versions[name] = f"{out['backend']} (keras {out['keras']})"
                rates = [args.images / s for s in out["wall_s"]]
                wall.setdefault((name, precision), []).extend(rates)
                per_cpu.setdefault((name, precision), []).extend(args.images / s for s in out["cpu_s"])
                print(
                    f"  ran {name:<10} {precision:<15} " + " ".join(f"{r:.2f}" for r in rates) + " img/s",
                    flush=True,
                )
    print("versions: " + "; ".join(versions.values()))
    print(
        f"{'backend':<11} {'precision':<15} {'img/s min / median / max':>26}  {'img per CPU-s (median)':>22}"
    )
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in per_cpu.items()}
    for key, rates in wall.items():
        print(f"{key[0]:<11} {key[1]:<15} {benchutil.fmt_mmm(rates, '.2f'):>26}  {med_cpu[key]:>22.2f}")
    for precision, _mixed in PRECISIONS:
        a, b = ("jax", precision), ("tensorflow", precision)
        print(
            f"jax / tensorflow, {precision}: {med[a] / med[b]:.2f} (wall), {med_cpu[a] / med_cpu[b]:.2f} (CPU)"
        )
    for name in BACKENDS:
        a, b = (name, "mixed_bfloat16"), (name, "float32")
        print(
            f"mixed_bfloat16 / float32, {name}: {med[a] / med[b]:.2f} (wall), {med_cpu[a] / med_cpu[b]:.2f} (CPU)"
        )
    ratio = med[("jax", "float32")] / med[("tensorflow", "float32")]
    print(f"resnet50_{args.image_size}_jax_vs_tf_fp32={ratio:.3f}")


if __name__ == "__main__":
    main()
