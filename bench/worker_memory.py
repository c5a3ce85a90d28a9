"""Worker memory across trials: RSS of one process running many trials in a row, as a reused Ray worker does.

Run from the repository root (about 3 minutes on 2 CPU cores):

    .venv/bin/python bench/worker_memory.py                  # 24 trials per process, both settings
    .venv/bin/python bench/worker_memory.py --trials 48 --repeats 2

With `reuse_actors=True` (the default) one worker runs trial after trial, so any memory a trial leaves behind
adds up over a study. Each setting runs in its own fresh Python process (`benchutil.run_child`), settings
interleaved per repeat: the demo preset's trials (4 arms x seeds, in Tune's order; 1 pretext and 2 fine-tune
epochs, pretext cache off so every pretext phase trains), through `training.run_pretext` / `run_finetune`
as the trainable calls them.

- `cache on`: the project's default (`study.train.model_cache`: compiled models kept, TensorFlow's kernel cache
  trimmed by `trim_kernel_cache`);
- `cache off`: `STUDY_MODEL_CACHE=0`, every phase compiles a new model (what reused workers did before).

Reported: RSS after the first trial and after the last, and the growth per trial over the second half (a
straight-line fit, so a one-off step such as a kernel-cache clear does not dominate).
Last line: `worker_rss_growth_mib_per_trial=<cache on, median over repeats>`.
"""

from __future__ import annotations

import argparse
import json
import sys

import benchutil

MIB = 2**20


def child(n_trials: int) -> dict:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import psutil

    from study.spec.presets import get_preset
    from study.train import phases as training
    from study.trainables import load_trial_data

    preset = get_preset("demo")
    trials = [
        t.replace(pretext_epochs=1, finetune_epochs=2, share_pretext=False) for t in preset.trial_configs()
    ]
    training.configure_tensorflow(trials[0].threads)
    data = load_trial_data(trials[0])
    rss = []
    for i in range(n_trials):
        trial = trials[i % len(trials)]
        weights = None
        if trial.task != "none":
            weights = training.run_pretext(trial, data).encoder_weights
        training.run_finetune(trial, data, encoder_weights=weights)
        rss.append(psutil.Process().memory_info().rss / MIB)
    return {"rss_mib": rss}


def growth_per_trial(rss: list[float]) -> float:
    """Least-squares slope of RSS over the second half of the trials, MiB per trial."""
    import numpy as np

    half = rss[len(rss) // 2 :]
    return float(np.polyfit(np.arange(len(half)), half, 1)[0]) if len(half) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        benchutil.emit_result(child(args.child))
        return
    benchutil.use_temp_cache("worker-memory-")
    from study.run.runner import prepare_data
    from study.spec.presets import get_preset

    prepare_data(get_preset("demo"))  # synthetic lesions and the decoded cache, before the children
    settings = {"cache on": {}, "cache off": {"STUDY_MODEL_CACHE": "0"}}
    runs: dict[str, list[dict]] = {k: [] for k in settings}
    for r in range(args.repeats):
        for name in settings if r % 2 == 0 else list(settings)[::-1]:
            out = benchutil.run_child(
                [__file__, "--child", str(args.trials)], env=settings[name], timeout=3600
            )
            rss = out["rss_mib"]
            runs[name].append({"first": rss[0], "last": rss[-1], "slope": growth_per_trial(rss)})
            print(
                f"repeat {r + 1} {name:<9}: RSS after trial 1 {rss[0]:7.0f} MiB, after trial {len(rss)} "
                f"{rss[-1]:7.0f} MiB, growth {runs[name][-1]['slope']:6.2f} MiB/trial  "
                f"(every 4th: {json.dumps([round(x) for x in rss[::4]])})",
                flush=True,
            )
    print(
        f"\n{'setting':<10} {'RSS after trial 1':>24} {f'RSS after trial {args.trials}':>24} {'MiB/trial':>22}"
    )
    for name, rows in runs.items():
        print(
            f"{name:<10} {benchutil.fmt_mmm([x['first'] for x in rows], '.0f'):>24} "
            f"{benchutil.fmt_mmm([x['last'] for x in rows], '.0f'):>24} "
            f"{benchutil.fmt_mmm([x['slope'] for x in rows], '.2f'):>22}"
        )
    print(
        f"worker_rss_growth_mib_per_trial_cache_off={benchutil.median([x['slope'] for x in runs['cache off']]):.2f}"
    )
    print(f"worker_rss_growth_mib_per_trial={benchutil.median([x['slope'] for x in runs['cache on']]):.2f}")


if __name__ == "__main__":
    sys.exit(main())
