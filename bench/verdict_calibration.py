"""Calibration of the primary analysis' verdicts (`study.verdicts`), by simulating whole studies through the
project's own functions (`report.simulate.simulated_results` -> `analysis.compare_to_baseline(family="primary")`
-> `verdicts.decide`). Numbers for STATISTICS.md, "Verdicts".

Design: the demo's shape, baseline + 3 SSL arms, the primary cell one regime (m = 3; the other regimes are
independent of it and change no verdict, so they are not simulated), seed effect
SD 5 pp shared by a seed's arms, noise SD 2 pp per cell (paired-difference SD 2.83 pp), values on the 1/200 grid
of an accuracy on 200 test images (ties as in real runs); margin delta = 2 pp, alpha = 0.05. Scenarios:

- null: every arm's true difference 0 -> the share of studies with any "better"/"worse" verdict (<= alpha);
- +delta / -delta: every arm's true difference exactly on the margin -> the share of studies with any
  "equivalent" verdict (<= alpha);
- inside: every arm's true difference 0 -> the share of comparisons judged equivalent (the power to show
  equivalence), and at d_z = 1 the share judged better (power of the superiority verdict, m = 3 vs the 9 of
  the study-wide family).

Rates come with Wilson 95 % Monte-Carlo intervals (statsmodels `proportion_confint`).

    nice -n 19 .venv/bin/python bench/verdict_calibration.py [--studies 2000] [--seeds 9 16]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from study import analysis as A
from study import verdicts as V
from study.report import simulate as S
from study.spec.presets import AnalysisPlan

SEED_SD, NOISE_SD, GRID = 0.05, 0.02, 1 / 200
MARGIN = 0.02
PLAN = AnalysisPlan(primary_regime="patience10", primary_fraction=1.0, equivalence_margin=MARGIN)


def verdicts_of(n_studies: int, n_seeds: int, effect: float, rng_seed: int) -> pd.DataFrame:
    """The primary comparisons of `n_studies` simulated studies, every SSL arm with true difference `effect`."""
    rng = np.random.default_rng([rng_seed, n_seeds, int(round(effect * 1e4)) + 10**6])
    arms = [a for a in S.SIM_ARMS if a != A.BASELINE]
    frames = []
    for i in range(n_studies):
        df = S.simulated_results(
            rng,
            n_seeds=n_seeds,
            effects=dict.fromkeys(arms, effect),
            seed_sd=SEED_SD,
            noise_sd=NOISE_SD,
            grid=GRID,
            regimes={PLAN.primary_regime: 10},  # regimes are independent: the secondary ones change no verdict
        )
        pairing = A.check_pairing(df, "test_auc")
        comp = A.compare_to_baseline(df, family="primary", pairing=pairing, primary=(1.0, PLAN.primary_regime))
        out = V.decide(df, comp, PLAN, pairing, bayes=False)
        frames.append(out[out["primary"]].assign(study=i))
    return pd.concat(frames, ignore_index=True)


def rate(hits: int, total: int) -> str:
    low, high = proportion_confint(hits, total, alpha=0.05, method="wilson")
    return f"{100 * hits / total:.1f} % [{100 * low:.1f}, {100 * high:.1f}] ({hits}/{total})"


def studywise(v: pd.DataFrame, verdicts: tuple[str, ...]) -> str:
    per_study = v.groupby("study")["verdict"].agg(lambda s: s.isin(verdicts).any())
    return rate(int(per_study.sum()), len(per_study))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[9, 16])
    ap.add_argument("--rng-seed", type=int, default=0)
    args = ap.parse_args()
    sd_diff = NOISE_SD * math.sqrt(2)
    for n in args.seeds:
        t0 = time.perf_counter()
        null = verdicts_of(args.studies, n, 0.0, args.rng_seed)
        up = verdicts_of(args.studies, n, MARGIN, args.rng_seed)
        down = verdicts_of(args.studies, n, -MARGIN, args.rng_seed)
        dz1 = verdicts_of(max(args.studies // 4, 100), n, sd_diff, args.rng_seed)
        print(f"n = {n} seeds, m = 3 primary comparisons, delta = {MARGIN}, alpha = {PLAN.alpha}")
        print(f"  null: studies with a better/worse verdict        {studywise(null, ('better', 'worse'))}")
        print(f"  +delta: studies with an equivalent verdict        {studywise(up, ('equivalent',))}")
        print(f"  -delta: studies with an equivalent verdict        {studywise(down, ('equivalent',))}")
        eq = int((null["verdict"] == "equivalent").sum())
        print(f"  null: comparisons judged equivalent (power)       {rate(eq, len(null))}")
        better = int((dz1["verdict"] == "better").sum())
        print(f"  d_z = 1: comparisons judged better (power)         {rate(better, len(dz1))}")
        print(
            f"  simulated headline power at d_z = 1 (report.simulate): m = 3 {S.headline_power(n, 3, 1.0):.2f}, "
            f"m = 9 {S.headline_power(n, 9, 1.0):.2f}"
        )
        print(f"  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
