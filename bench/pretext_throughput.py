"""Throughput of the pretext transforms (study/tasks/paper.py) next to naive per-image reference versions.

Run from the repository root:

    .venv/bin/python bench/pretext_throughput.py            # 7 repeats
    .venv/bin/python bench/pretext_throughput.py --repeats 5

For each transform at 64 px (batch 256) and 224 px (batch 64), with the paper's parameters scaled by
`default_params`, it times the library transform and a straightforward per-image Python loop written
here, interleaved (each sample averages enough calls to last 50 ms), and prints images/s as
min / median / max over the repeats plus the speed-up (median reference time / median library time).
Both versions draw the same random numbers from the same seed, so their outputs are checked first:
equal for rotation4, missing_patch and corruption; for rotation (skimage vs `scipy.ndimage.rotate`,
whose constant-mode edge handling differs) equal to within one grey level inside the inscribed disc,
where no edge effects reach. The last line is
`pretext_speedup_min=<smallest speed-up across transforms and sizes>`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from study.tasks import paper
from study.tasks.registry import default_params, get_task

CASES = ((64, 256), (224, 64))  # (image side in px, batch size)
TASK_NAMES = ("rotation", "rotation4", "missing_patch", "corruption")


# ---------------------------------------------------------------- naive references (same draws)


def naive_rotation(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    targets = rng.random(len(images), dtype=np.float32)
    rotated = [
        ndimage.rotate(img, float(t) * 360.0, reshape=False, order=1, mode="constant", cval=0)
        for img, t in zip(images, targets)
    ]
    return np.stack(rotated), targets


def naive_rotation4(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = rng.integers(0, 4, size=len(images), dtype=np.int64)
    return np.stack([np.rot90(img, ki) for img, ki in zip(images, k)]), k


def naive_missing_patch(
    images: np.ndarray, rng: np.random.Generator, patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    size = images.shape[1]
    corners = rng.integers(0, size - patch_size + 1, size=(len(images), 2))
    out = images.copy()
    for img, (r, c) in zip(out, corners):
        img[r : r + patch_size, c : c + patch_size] = 0
    return out, images.copy()


def naive_corruption(
    images: np.ndarray, rng: np.random.Generator, swap_count: int, swap_patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    q = swap_patch_size
    pairs = paper._disjoint_square_pairs(rng, (swap_count, len(images)), images.shape[1], q)
    out = images.copy()
    for i, img in enumerate(out):
        for ra, ca, rb, cb in pairs[:, i]:
            patch = img[ra : ra + q, ca : ca + q].copy()
            img[ra : ra + q, ca : ca + q] = img[rb : rb + q, cb : cb + q]
            img[rb : rb + q, cb : cb + q] = patch
    return out, images.copy()


NAIVE: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "rotation": naive_rotation,
    "rotation4": naive_rotation4,
    "missing_patch": naive_missing_patch,
    "corruption": naive_corruption,
}


# ---------------------------------------------------------------- checks and timing


Batch = tuple[np.ndarray, np.ndarray]


def check_agreement(name: str, fast: Batch, naive: Batch) -> str:
    """Raise AssertionError when the two versions disagree where they should agree; return a note."""
    assert np.array_equal(fast[1], naive[1]), f"{name}: targets differ"
    if name != "rotation":
        assert np.array_equal(fast[0], naive[0]), f"{name}: inputs differ"
        return "identical"
    size = fast[0].shape[1]
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    disc = np.hypot(yy, xx) < size / 2 - 2
    diff = np.abs(fast[0].astype(int) - naive[0].astype(int))
    assert diff[:, disc].max() <= 1, f"rotation: interior differs by {diff[:, disc].max()}"
    return f"disc max |diff| {diff[:, disc].max()}, all-pixel mean |diff| {diff.mean():.2f}"


def run(repeats: int, seed: int = 0) -> float:
    print(f"pretext throughput, images/s as min / median / max over {repeats} repeats (higher is better)")
    header = f"{'px':>4} {'batch':>5} {'task':<14} {'library':>26} {'naive reference':>26} {'speed-up':>8}"
    print(header + "  agreement")
    speedups = []
    for size, batch in CASES:
        images = np.random.default_rng(seed).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
        for name in TASK_NAMES:
            task, naive, params = get_task(name), NAIVE[name], default_params(name, size)
            note = check_agreement(
                name,
                task.make_batch(images, np.random.default_rng(seed), **params),
                naive(images, np.random.default_rng(seed), **params),
            )
            # fresh generators per call from (seed, repeat), so both versions see the same draws
            fast_call = _timed_call(lambda r: task.make_batch(images, _rng(seed, r), **params))
            naive_call = _timed_call(lambda r: naive(images, _rng(seed, r), **params))
            fast_s, naive_s = [], []
            for r in range(repeats):  # interleaved, so load changes on a shared machine hit both alike
                fast_s.append(fast_call(r))
                naive_s.append(naive_call(r))
            speedup = float(np.median(naive_s) / np.median(fast_s))
            speedups.append(speedup)
            print(
                f"{size:>4} {batch:>5} {name:<14} {_rates(batch, fast_s):>26} {_rates(batch, naive_s):>26} "
                f"{speedup:>7.2f}x  {note}"
            )
    return min(speedups)


def _rng(seed: int, repeat: int) -> np.random.Generator:
    return np.random.default_rng([seed, repeat])


def _timed_call(call: Callable[[int], object], min_seconds: float = 0.05) -> Callable[[int], float]:
    """`timed(r)`: seconds per `call(r)`, averaged over enough calls to last `min_seconds` (timer noise)."""
    t0 = time.perf_counter()
    call(0)
    calls = max(1, int(np.ceil(min_seconds / max(time.perf_counter() - t0, 1e-9))))

    def timed(r: int) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            call(r)
        return (time.perf_counter() - t0) / calls

    return timed


def _rates(batch: int, seconds: list[float]) -> str:
    rates = batch / np.asarray(seconds)
    return f"{rates.min():.0f} / {np.median(rates):.0f} / {rates.max():.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per transform (>= 5)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    print(f"pretext_speedup_min={run(args.repeats):.2f}")


if __name__ == "__main__":
    main()
