"""Throughput of the synthetic lesion generator (study.data.synth.render_lesions) on one core.

Usage: python bench/synth_throughput.py [--repeats 5] [--n64 512] [--n224 64]
Prints min/median/max images per second over the repeats at 64 px and 224 px, by wall clock and by this
process's CPU time (the CPU figure is the one to trust on a shared machine: other processes do not lower it),
then a last line `synth_images_per_s_64=<median wall-clock value>` for scripts. Target: >= 500 images/s at
64 px.
"""

from __future__ import annotations

import os

# One core: BLAS (the texture upsampling matmuls) must not fan out over threads. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from study.data.synth import render_lesions  # noqa: E402


def images_per_second(n: int, size: int, repeats: int) -> tuple[list[float], list[float]]:
    """(wall-clock, CPU-time) images/s of render_lesions over `repeats` batches of n images, 35% malignant."""
    labels = np.random.default_rng(0).uniform(size=n) < 0.35
    render_lesions(labels[:4], size, np.random.default_rng(0))  # warm-up: first-call allocations
    wall, cpu = [], []
    for r in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        render_lesions(labels, size, np.random.default_rng(r))
        wall.append(n / (time.perf_counter() - start))
        cpu.append(n / max(time.process_time() - start_cpu, 1e-9))
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n64", type=int, default=512, help="images per batch at 64 px")
    parser.add_argument("--n224", type=int, default=64, help="images per batch at 224 px")
    args = parser.parse_args()
    medians = {}
    for size, n in ((64, args.n64), (224, args.n224)):
        wall, cpu = images_per_second(n, size, args.repeats)
        medians[size] = statistics.median(wall)
        for clock, rates in (("wall", wall), ("cpu", cpu)):
            print(
                f"{size:>3} px, {n} images x {args.repeats} repeats, {clock:>4} clock: images/s "
                f"min {min(rates):.0f}, median {statistics.median(rates):.0f}, max {max(rates):.0f}"
            )
    print(f"synth_images_per_s_64={medians[64]:.1f}")


if __name__ == "__main__":
    main()
