"""Trials at once on one machine: N one-thread trials side by side vs N/2 two-thread trials, same study.

On a machine with C cores the demo runs C one-thread trials at a time (`cpus_per_trial=1`, the preset's
setting). The alternative gives each trial 2 cores (`--cpus-per-trial 2`: 2 TensorFlow intra-op threads) and
runs half as many at once. Both studies run here in one embedded Ray, interleaved, through
`study.run.runner.run_study` (the code path of `study run`), on the demo grid with `--seeds` seeds.

    .venv/bin/python bench/concurrency.py                 # demo, 2 seeds (8 trials), 3 repeats, ~6 min
    .venv/bin/python bench/concurrency.py --preset smoke --repeats 1

Weights differ between 1 and 2 threads (another summation order), so only the cost is compared.
Last line: `concurrency_speedup=<median over repeats of wall(2-thread trials) / wall(1-thread trials)>`
(above 1: one-thread trials side by side finish the study sooner).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import benchutil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tmp = benchutil.use_temp_cache("concurrency-")
    import pandas as pd
    import ray

    from study.run.runner import prepare_data, run_study
    from study.spec.presets import get_preset
    from study.spec.resolve import apply_flags, finalize_study

    preset = get_preset(args.preset).with_seeds(args.seeds)
    cores = os.cpu_count() or 1
    if cores < 2:
        raise SystemExit("needs at least 2 cores")
    prepare_data(preset)  # synthetic lesions + decoded cache, before any timing
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    settings = {f"{cores}x1 thread": 1, f"{cores // 2}x2 threads": 2}
    walls: dict[str, list[float]] = {k: [] for k in settings}
    trial_s: dict[str, list[float]] = {k: [] for k in settings}
    print(
        f"preset={preset.name} seeds={args.seeds} trials={len(preset.trial_configs())} cores={cores}",
        flush=True,
    )
    for r in range(args.repeats):
        order = list(settings) if r % 2 == 0 else list(settings)[::-1]
        for label in order:
            t0 = time.perf_counter()
            run_dir = run_study(
                finalize_study(apply_flags(preset, cpus_per_trial=settings[label])),
                storage=tmp / "runs",
                name=f"r{r}-{settings[label]}t",
                write_report=False,
            )
            wall = time.perf_counter() - t0
            results = pd.read_csv(run_dir / "results.csv").drop_duplicates("trial_id")
            assert (results["status"] == "ok").all(), results[results["status"] != "ok"]
            walls[label].append(wall)
            trial_s[label].append(float(results["trial_seconds"].median()))
            print(
                f"repeat {r + 1} {label:<12}: study wall {wall:6.1f} s, median trial {trial_s[label][-1]:5.1f} s",
                flush=True,
            )
    ray.shutdown()
    one, two = settings
    print(f"\n{'setting':<14} {'study wall s (min / median / max)':>36} {'median trial s':>26}")
    for label in settings:
        print(
            f"{label:<14} {benchutil.fmt_mmm(walls[label], '.1f'):>36} {benchutil.fmt_mmm(trial_s[label], '.1f'):>26}"
        )
    ratios = [b / a for a, b in zip(walls[one], walls[two])]
    print(f"wall({two}) / wall({one}) per repeat: {benchutil.fmt_mmm(ratios, '.2f')}")
    print(f"concurrency_speedup={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
