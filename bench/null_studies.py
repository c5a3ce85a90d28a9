"""Simulated studies through the project's own entry point (``analysis.compare_to_baseline``): false-positive
rates (per comparison, per Holm family, study-wise for both families), interval coverage and power, at n = 8
and 16 seeds. Numbers for STATISTICS.md.

Design as the audit of issue 14: 4 arms (baseline + 3 SSL) x 3 regimes, seed effect SD 5 pp shared by a seed's
arms, noise SD 2 pp per cell, regimes independent, values rounded to the 1/200 grid of an accuracy on 200 test
images (so ties occur as they do in real runs; ``--grid 0`` for continuous values).

    nice -n 19 .venv/bin/python bench/null_studies.py [--studies 1000] [--power-studies 300] [--seeds 8 16]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from study import analysis as A
from study import stats
from study.report import simulate as S

SEED_SD, NOISE_SD = 0.05, 0.02
SD_DIFF = NOISE_SD * math.sqrt(2)  # SD of a paired difference: d_z = effect / SD_DIFF


def run(n_studies: int, n_seeds: int, rng_seed: int, grid: float, effects: dict[str, float]) -> pd.DataFrame:
    rng = np.random.default_rng([rng_seed, n_seeds])
    frames = []
    for i in range(n_studies):
        df = S.simulated_results(
            rng, n_seeds=n_seeds, effects=effects, seed_sd=SEED_SD, noise_sd=NOISE_SD, grid=grid or None
        )
        frames.append(A.compare_to_baseline(df).assign(study=i, _df=[df] * 9 if i < 200 else None))
    return pd.concat(frames, ignore_index=True)


def bca_coverage(c: pd.DataFrame, truth: float, n_resamples: int) -> float:
    """Coverage of the BCa bootstrap interval (no longer reported) on the first 200 studies' comparisons."""
    hits, total = 0, 0
    for (study, regime, arm), _ in c[c["_df"].notna()].groupby(["study", "regime", "arm"]):
        df = c.loc[c["study"] == study, "_df"].iloc[0]
        m, _, arms = A.paired_matrix(df, "test_auc", regime)
        j = arms.index(arm)
        rng = np.random.default_rng([study, j])
        low, high, _ = stats.bootstrap_mean_diff_ci(m[:, j], m[:, 0], 0.95, n_resamples, rng)
        hits += low <= truth <= high
        total += 1
    return hits / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=1000, help="null studies per n")
    ap.add_argument("--power-studies", type=int, default=300, help="studies per (n, effect) for power")
    ap.add_argument("--seeds", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--grid", type=float, default=1 / 200, help="metric resolution; 0 = continuous")
    ap.add_argument("--bca-resamples", type=int, default=1999)
    args = ap.parse_args()
    print(f"design: 3 SSL arms x 3 regimes; seed SD {SEED_SD}, noise SD {NOISE_SD}, grid {args.grid:g}")
    for n in args.seeds:
        t0 = time.perf_counter()
        c = run(args.studies, n, 14, args.grid, {})
        by_regime = c.groupby(["study", "regime"])
        print(f"\n== n = {n} seeds, {args.studies} null studies ({len(c)} comparisons) ==")
        print(
            f"per-comparison false-positive rate (uncorrected Wilcoxon p < 0.05): {np.mean(c.p_wilcoxon < 0.05):.3f}"
        )
        print(
            f"per-family (Holm over a regime's 3 arms), any rejection:            {by_regime.p_holm_regime.min().lt(0.05).mean():.3f}"
        )
        print(
            f"study-wise, Holm per regime (family='regime'):                     {c.groupby('study').p_holm_regime.min().lt(0.05).mean():.3f}"
        )
        print(
            f"study-wise, Holm over all 9 (family='study', the default):         {c.groupby('study').p_holm_study.min().lt(0.05).mean():.3f}"
        )
        rates = S.null_rejection_rates(n, 3, 3)
        print(f"  simulate.null_rejection_rates (continuous, what the report states): {rates}")
        ties = np.mean(c.wilcoxon_method == "exact, ties or zeros (conservative)")
        print(f"comparisons with tied |differences| or zeros: {ties:.3f}")
        hl = np.mean((c.hl_ci_low <= 0) & (c.hl_ci_high >= 0))
        t = np.mean((c.mean_ci_low <= 0) & (c.mean_ci_high >= 0))
        print(
            f"coverage of 0: exact signed-rank CI (HL) {hl:.3f} (level {c.hl_ci_level.median():.4f}); "
            f"t-interval of the mean {t:.3f}; BCa (first 200 studies, {args.bca_resamples} resamples) "
            f"{bca_coverage(c, 0.0, args.bca_resamples):.3f}"
        )
        for dz in (0.5, 1.0, 1.5):
            eff = dz * SD_DIFF
            p = run(args.power_studies, n, 15, args.grid, {S.SIM_ARMS[-1]: eff})
            hit = p[p.arm == S.SIM_ARMS[-1]]
            cov = np.mean((hit.hl_ci_low <= eff) & (hit.hl_ci_high >= eff))
            print(
                f"power at d_z = {dz:g} (one arm, +{100 * eff:.1f} pp, {args.power_studies} studies): "
                f"family='study' {hit.p_holm_study.lt(0.05).mean():.3f} "
                f"(simulate: {S.headline_power(n, 9, dz):.3f}), "
                f"family='regime' {hit.p_holm_regime.lt(0.05).mean():.3f} "
                f"(simulate: {S.headline_power(n, 3, dz):.3f}); HL CI coverage of the shift {cov:.3f}"
            )
        print(f"({time.perf_counter() - t0:.0f} s)")
    print("\nseeds for 80 % power of the headline procedure (simulate.seeds_for_headline_power):")
    for m in (1, 3, 9):
        row = ", ".join(f"d_z {e:g}: {S.seeds_for_headline_power(e, m):g}" for e in (0.5, 0.8, 1.0, 1.5, 2.0))
        print(
            f"  Holm over m = {m}: {row}   (paired t-test, uncorrected: d_z 1 -> {stats.seeds_for_power(1.0):g})"
        )


if __name__ == "__main__":
    main()
