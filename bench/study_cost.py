"""Study cost: epochs executed and wall time of this project's study vs a naive Tune study, side by side.

Naive = what a straightforward Tune study does: every trial trains its own pretext phase (no cache), and each
early-stopping regime is a separate trial with a real `keras.callbacks.EarlyStopping` (one run per regime).
Ours = pretext shared through the cache and the regimes replayed from one fine-tune run per (arm, seed).

Both studies run here, one after the other, on the same preset, seeds and embedded Ray.

    python bench/study_cost.py [--preset smoke] [--seeds N]

Last line: `study_cost_ratio=<executed epochs ours / naive>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd


def epochs_executed(results: pd.DataFrame) -> tuple[int, int]:
    """(pretext epochs, fine-tune epochs) actually trained, from a results table (one row per trial x regime)."""
    per_trial = results.drop_duplicates("trial_id")
    return int(per_trial["pretext_epochs_run"].fillna(0).sum()), int(per_trial["finetune_epochs_run"].sum())


def naive_preset(preset):
    """One trial per (arm, regime, seed), each training its own pretext and stopping early for real."""
    arms = tuple(
        {**arm, "patiences": [p], "early_stop_training": p > 0}
        for arm in preset.arms
        for p in preset.base.patiences
    )
    return preset.replace(
        name=f"{preset.name}-naive", arms=arms, base=preset.base.replace(share_pretext=False)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()

    import ray

    from study.run.runner import run_study
    from study.spec.presets import get_preset
    from study.spec.resolve import finalize_study

    preset = get_preset(args.preset)
    if args.seeds:
        preset = preset.with_seeds(args.seeds)
    tmp = Path(tempfile.mkdtemp(prefix="study-cost-"))
    os.environ.setdefault("STUDY_CACHE_DIR", str(tmp / "cache"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    for label, p in (("ours", preset), ("naive", naive_preset(preset))):
        t0 = time.perf_counter()
        run_dir = run_study(finalize_study(p), storage=tmp / "runs", name=label, write_report=False)
        wall = time.perf_counter() - t0
        results = pd.read_csv(run_dir / "results.csv")
        assert (results["status"] == "ok").all(), results[results["status"] != "ok"]
        pre, fine = epochs_executed(results)
        rows.append(
            {
                "study": label,
                "trials": results["trial_id"].nunique(),
                "pretext_epochs": pre,
                "finetune_epochs": fine,
                "epochs": pre + fine,
                "wall_s": round(wall, 1),
            }
        )
    ray.shutdown()
    table = pd.DataFrame(rows).set_index("study")
    print(
        f"preset={preset.name} seeds={len(preset.seeds)} arms={len(preset.arms)} "
        f"regimes={list(preset.base.patiences)} cpus={os.cpu_count()}"
    )
    print(table.to_string())
    ratio = table.loc["ours", "epochs"] / table.loc["naive", "epochs"]
    print(f"wall_time_ratio={table.loc['ours', 'wall_s'] / table.loc['naive', 'wall_s']:.2f}")
    print(f"study_cost_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
