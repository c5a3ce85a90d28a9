"""CPU time of `study report` on a large study: 6 arms x 3 regimes x 3 label fractions x 10 seeds, side by side
for one or more source trees (e.g. the commit before a change and the working tree), each in a fresh process.

The run folder is the tests' synthetic results table (tests/support/fixtures_results.py: every column a real
results.csv has, with history and manifest), written once; each tree's report is written into its own copy.
Simulations the report caches on disk (study.report.simulate) are warmed once per tree first, as on a machine
that has written a report before; `--cold` measures without that warm-up.

    .venv/bin/python bench/report_speed.py --tree /path/to/old/checkout --tree . [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the tests' synthetic results tables

from fixtures_results import make_history, make_manifest, make_results, write_run_dir  # noqa: E402

ARMS = {
    "rotation": 0.01,
    "missing_patch": 0.0,
    "corruption": -0.005,
    "rotation4": 0.0,
    "simclr": 0.01,
    "byol": 0.0,
}
FRACTIONS = (0.1, 0.5, 1.0)
CHILD = """
import resource, sys, time
from study.report.write import write_report
t = time.perf_counter()
write_report(sys.argv[1])
cpu = resource.getrusage(resource.RUSAGE_SELF)
print(f"{cpu.ru_utime + cpu.ru_stime:.2f} {time.perf_counter() - t:.2f}")
"""


def make_run(folder: Path) -> Path:
    results = make_results(n_seeds=10, effects=ARMS, label_fractions=FRACTIONS, references=True)
    return write_run_dir(folder / "run", results, make_history(results), make_manifest(results))


def report_cpu(tree: Path, run: Path, env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds of the whole process, wall seconds of write_report) for one report with `tree`'s code."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(run)],
        env={**env, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tree", action="append", type=Path, required=True, help="a checkout whose study/ to time"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="no warm-up of the simulation cache")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = make_run(Path(tmp))
        env = {**os.environ, "STUDY_CACHE_DIR": str(Path(tmp) / "cache")}
        runs = {}
        for i, tree in enumerate(args.tree):
            runs[tree] = shutil.copytree(base, Path(tmp) / f"run{i}")
            if not args.cold:
                report_cpu(tree.resolve(), runs[tree], env)
        times: dict[Path, list[tuple[float, float]]] = {t: [] for t in args.tree}
        for _ in range(args.repeats):  # alternate trees so that a busy moment hits both
            for tree in args.tree:
                times[tree].append(report_cpu(tree.resolve(), runs[tree], env))
        for tree, ts in times.items():
            cpu = sorted(c for c, _ in ts)
            print(
                f"{tree}: CPU s per report (process) {', '.join(f'{c:.1f}' for c, _ in ts)}; median {cpu[len(cpu) // 2]:.1f}"
            )
    print(f"report_cpu_s_median={cpu[len(cpu) // 2]:.2f}  ({time.strftime('%Y-%m-%d')})")


if __name__ == "__main__":
    main()
