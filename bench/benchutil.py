"""Small helpers shared by the issue-8 benchmarks (trial_overhead, input_pipeline, compute, memory).

Imported as `benchutil` by scripts run as `python bench/NAME.py` (Python puts bench/ on sys.path). Nothing
here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT_JSON="


def mmm(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max); NaNs when empty."""
    v = sorted(float(x) for x in values)
    if not v:
        return (float("nan"),) * 3
    return v[0], statistics.median(v), v[-1]


def fmt_mmm(values: Sequence[float], spec: str = ".2f", sep: str = " / ") -> str:
    """'min / median / max' of `values`, each formatted with `spec`; '-' when empty."""
    if not values:
        return "-"
    return sep.join(format(x, spec) for x in mmm(values))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def use_temp_cache(prefix: str) -> Path:
    """Point STUDY_CACHE_DIR at a fresh temporary folder unless the caller set it (as bench/study_cost.py):
    synthetic data is generated there, and nothing is written into the user's cache."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.setdefault("STUDY_CACHE_DIR", str(tmp / "cache"))
    return tmp


def emit_result(payload: dict) -> None:
    """Child side of `run_child`: print the payload as one JSON line for the parent to pick up."""
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def run_child(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run `python <argv>` in a fresh interpreter and return the dict it passed to `emit_result`.

    The child's stderr is kept for the error message; a child that exits non-zero or prints no result
    raises RuntimeError with the tail of its output.
    """
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, *argv], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            if proc.returncode != 0:
                break
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-25:])
    raise RuntimeError(f"child {' '.join(argv)} failed (exit {proc.returncode}):\n{tail}")


def synthetic_data(image_size: int, n_train: int, n_test: int | None = None, seed: int = 0):
    """A random-pixel `study.data.DecodedData` whose training part (after the 0.2 validation split) has
    `n_train` images; labels alternate 0/1."""
    import numpy as np

    from study.data import DecodedData, Split

    rng = np.random.default_rng(seed)

    def split(n: int, name: str) -> Split:
        return Split(
            images=rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8),
            labels=np.arange(n, dtype=np.int64) % 2,
            paths=[f"{name}/{i}" for i in range(n)],
        )

    n_total = int(round(n_train / 0.8))
    return DecodedData(
        train=split(n_total, "train"),
        test=split(n_test if n_test is not None else max(8, n_train // 4), "test"),
        fingerprint=f"bench-{image_size}-{n_total}-{seed}",
        root="<memory>",
        image_size=image_size,
        notes=[],
    )
