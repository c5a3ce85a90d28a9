"""Calibration of looks as seeds accrue (`study.looks`: planned looks with alpha spending, and the correction
for unplanned extensions) by simulating whole studies through the project's own functions
(`report.simulate.simulated_results` -> the primary cell's arm - baseline differences -> `looks.look_tests`,
i.e. `stats.signed_rank_pvalues` and `verdicts.tost_paired` -> `looks.sequential_verdicts`). Numbers for
STATISTICS.md, "Planned looks".

Design as `bench/verdict_calibration.py`: the demo's shape, baseline + 3 SSL arms (m = 3), seed effect SD 5 pp
shared by a seed's arms, noise SD 2 pp per cell (paired-difference SD 2.83 pp), values on the 1/200 grid,
delta = 2 pp, alpha = 0.05. Each simulated study draws its largest seed count once; a look analyses the first
seeds of it, so looks are nested as in a study that grows. (Many studies are drawn as the independent regimes
of one simulated table: the seed effect, shared by a study's arms, cancels in the differences; the first
study's differences are checked against `analysis.paired_matrix`.)

Planned looks (`--looks`, each design its own): a decided comparison's arm stops; the baseline runs while
any comparison is open.
- null (every arm's true difference 0): the share of studies with any better/worse verdict over all looks
  (<= alpha), the share of comparisons shown equivalent, and the trials run;
- +delta / -delta (every arm exactly on the margin): the share of studies with any equivalent verdict;
- d_z = 1 (every arm better by 1 SD of the differences): the share of comparisons judged better and the
  trials run;
- the fixed design with the same power: the fewest seeds n at which one analysis (Holm at alpha, `verdicts`)
  reaches the sequential design's power, and its (m + 1) n trials.
Unplanned looks (`--unplanned`, seed counts of the original run and its extensions): the study is extended
while any primary comparison is undecided, the undecided arms (and the baseline) to the next count; every
report judges all its looks again at alpha / K. Rates: a false claim in the last report, and in any report
along the way (the first report is the fixed design at alpha, whose claims a later one may withdraw); and
extended to the last count whatever the verdicts (K fixed in advance: the case the union bound covers).

Rates come with Wilson 95 % Monte-Carlo intervals (statsmodels `proportion_confint`).

    nice -n 19 .venv/bin/python bench/looks_calibration.py [--studies 2000] [--looks 4 8 12]
        [--looks 5 10 15 20] [--unplanned 9 18 27] [--dz 1]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from statsmodels.stats.proportion import proportion_confint

from study import analysis as A
from study import looks as L
from study.report import simulate as S

SEED_SD, NOISE_SD, GRID = 0.05, 0.02, 1 / 200
MARGIN, ALPHA, REGIME = 0.02, 0.05, "patience10"
SD_DIFF = NOISE_SD * math.sqrt(2)
ARMS = [a for a in S.SIM_ARMS if a != A.BASELINE]
BATCH = 250  # studies per simulated table (its regimes)


def differences(n_studies: int, n_seeds: int, effect: float, rng_seed: int) -> np.ndarray:
    """(n_studies, m, n_seeds) arm - baseline differences of the primary cell of simulated studies, every SSL
    arm with true difference `effect`."""
    rng = np.random.default_rng([rng_seed, n_seeds, int(round(effect * 1e4)) + 10**6])
    out = []
    for start in range(0, n_studies, BATCH):
        size = min(BATCH, n_studies - start)
        regimes = {f"{REGIME}_{i}": 10 for i in range(size)}
        df = S.simulated_results(
            rng, n_seeds=n_seeds, effects=dict.fromkeys(ARMS, effect), seed_sd=SEED_SD, noise_sd=NOISE_SD,
            grid=GRID, regimes=regimes,
        )  # fmt: skip
        x = df["test_auc"].to_numpy().reshape(size, n_seeds, len(S.SIM_ARMS))  # regime, seed, arm order
        if start == 0:  # the reshape is the project's own pairing of the first study
            first = df[df["regime"] == next(iter(regimes))]
            matrix = A.paired_matrix(first, "test_auc", next(iter(regimes)), list(S.SIM_ARMS))[0]
            assert np.array_equal(matrix, x[0]), "simulated table not in (regime, seed, arm) order"
        out.append(np.transpose(x[:, :, 1:] - x[:, :, :1], (0, 2, 1)))
    return np.concatenate(out)


def tests_at(d: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`looks.look_tests` of every study at `seeds`, each (n_studies, K, m)."""
    n_studies, m, n = d.shape
    p_w, fav, p_t = L.look_tests(d.reshape(-1, n), seeds, MARGIN)
    return tuple(x.reshape(len(seeds), n_studies, m).transpose(1, 0, 2) for x in (p_w, fav, p_t))


def planned(d: np.ndarray, looks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts (n_studies, m) and trials run (n_studies,) of the planned design `looks`."""
    p_w, fav, p_t = tests_at(d, looks)
    verdicts, trials = [], []
    for i in range(d.shape[0]):
        r = L.sequential_verdicts(looks, p_w[i], fav[i], p_t[i], ALPHA, looks=looks)
        arm_seeds = np.where(r.look > 0, np.asarray(looks)[r.look - 1], looks[-1])
        verdicts.append(r.verdict)
        trials.append(arm_seeds.sum() + arm_seeds.max())  # the baseline runs while any arm does
    return np.array(verdicts), np.array(trials)


def fixed(d: np.ndarray, n: int) -> np.ndarray:
    """Verdicts (n_studies, m) of one analysis at n seeds (Holm at alpha, as `verdicts.decide`)."""
    p_w, fav, p_t = tests_at(d, [n])
    return np.array(
        [L.sequential_verdicts([n], p_w[i], fav[i], p_t[i], ALPHA).verdict for i in range(len(d))]
    )


def unplanned(d: np.ndarray, schedule: list[int], extend_always: bool) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts (n_studies, m) of each study's last report, and every report's verdicts (n_studies, K, m), ""
    after the last, of the unplanned extensions `schedule` (seed counts): extended while any comparison is
    undecided (its arm and the baseline to the next count), or to the last count (`extend_always`)."""
    m = d.shape[1]
    reports = np.full((d.shape[0], len(schedule), m), "", dtype=object)
    for i, di in enumerate(d):
        counts = [np.full(m, schedule[0])]
        for k in range(len(schedule)):
            seeds = np.array(counts)  # (k + 1, m): each comparison's seeds at each look
            p_w, fav, p_t = L.look_tests(di, seeds, MARGIN)
            r = L.sequential_verdicts(seeds.max(axis=1), p_w, fav, p_t, ALPHA)
            reports[i, k] = r.verdict
            if k + 1 == len(schedule) or not (extend_always or r.open.any()):
                break
            counts.append(np.where(r.open | extend_always, schedule[k + 1], counts[-1]))
    last = np.array([row[max(j for j in range(len(schedule)) if row[j][0] != "")] for row in reports])
    return last, reports


def rate(hits: int, total: int) -> str:
    low, high = proportion_confint(hits, total, alpha=0.05, method="wilson")
    return f"{100 * hits / total:.1f} % [{100 * low:.1f}, {100 * high:.1f}] ({hits}/{total})"


def any_of(verdicts: np.ndarray, codes: tuple[str, ...]) -> str:
    per_study = np.isin(verdicts, codes).reshape(len(verdicts), -1).any(axis=1)
    return rate(int(per_study.sum()), len(per_study))


def share(verdicts: np.ndarray, code: str) -> float:
    return float(np.mean(verdicts == code))


def fixed_match(d: np.ndarray, code: str, power: float, n_max: int) -> str:
    """The fewest seeds with which one analysis reaches `power` (share of comparisons judged `code`)."""
    for n in range(2, n_max + 1):
        p = share(fixed(d, n), code)
        if p >= power:
            return f"n = {n}: {100 * p:.1f} %, {(d.shape[1] + 1) * n} trials"
    return f"more than {n_max} seeds (at {n_max}: {100 * share(fixed(d, n_max), code):.1f} %)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--looks", type=int, nargs="+", action="append")
    ap.add_argument("--unplanned", type=int, nargs="+", default=[9, 18, 27])
    ap.add_argument("--dz", type=float, default=1.0)
    ap.add_argument("--rng-seed", type=int, default=0)
    args = ap.parse_args()
    designs = args.looks or [[4, 8, 12], [5, 10, 15, 20]]
    n_max = max([*(d[-1] for d in designs), args.unplanned[-1]])
    t0 = time.perf_counter()
    data = {
        name: differences(args.studies, n_max, effect, args.rng_seed)
        for name, effect in (
            ("null", 0.0),
            ("+delta", MARGIN),
            ("-delta", -MARGIN),
            ("dz", args.dz * SD_DIFF),
        )
    }
    elapsed = time.perf_counter() - t0
    print(f"{args.studies} studies per scenario, m = 3, delta = {MARGIN}, alpha = {ALPHA} ({elapsed:.0f} s)")
    for looks in designs:
        t0 = time.perf_counter()
        t = np.asarray(looks) / looks[-1]
        levels = np.round(L.nominal_levels(t, ALPHA, 2), 5)
        print(f"\nplanned looks {looks}: nominal two-sided levels (m = 1) {levels}")
        null, null_trials = planned(data["null"][:, :, : looks[-1]], looks)
        print(f"  null: studies with a better/worse verdict         {any_of(null, ('better', 'worse'))}")
        for side in ("+delta", "-delta"):
            v, _ = planned(data[side][:, :, : looks[-1]], looks)
            print(f"  {side}: studies with an equivalent verdict        {any_of(v, ('equivalent',))}")
        eq = share(null, "equivalent")
        print(f"  null: comparisons shown equivalent {100 * eq:.1f} %, mean trials {null_trials.mean():.1f} "
              f"of {4 * looks[-1]}; fixed design with that power: "
              f"{fixed_match(data['null'][:, :, : looks[-1]], 'equivalent', eq, looks[-1])}")  # fmt: skip
        alt, alt_trials = planned(data["dz"][:, :, : looks[-1]], looks)
        better = share(alt, "better")
        print(f"  d_z = {args.dz}: comparisons judged better {100 * better:.1f} %, mean trials "
              f"{alt_trials.mean():.1f} of {4 * looks[-1]}; fixed design with that power: "
              f"{fixed_match(data['dz'][:, :, : looks[-1]], 'better', better, looks[-1])}")  # fmt: skip
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    sched = args.unplanned
    print(f"\nunplanned extensions {sched} (Bonferroni across looks, every look judged again at alpha / K)")
    for name, codes, what in (
        ("null", ("better", "worse"), "a better/worse"),
        ("+delta", ("equivalent",), "an equivalent"),
        ("-delta", ("equivalent",), "an equivalent"),
    ):
        d = data[name][:, :, : sched[-1]]
        last, reports = unplanned(d, sched, extend_always=False)
        always, _ = unplanned(d, sched, extend_always=True)
        print(f"  {name}: studies with {what} verdict: extended while undecided: last report "
              f"{any_of(last, codes)}, any report {any_of(reports, codes)}; always {len(sched)} looks: "
              f"{any_of(always, codes)}")  # fmt: skip
    first = fixed(data["null"][:, :, : sched[0]], sched[0])
    alone = any_of(first, ("better", "worse"))
    print(f"  null: the first report alone (fixed design at {sched[0]} seeds): {alone}")
    print(f"  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
