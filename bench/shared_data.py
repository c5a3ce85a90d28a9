"""Shared data: memory of concurrent trials loading one decoded dataset, today's `.npz` cache vs the
memory-mapped cache entry, side by side.

Run from the repository root (about 2 minutes on 2 CPU cores, most of it writing the two caches; `--quick`
about 20 s):

    .venv/bin/python bench/shared_data.py                    # 10,000 images at 224 px, 2 processes
    .venv/bin/python bench/shared_data.py --quick            # 1,000 images at 224 px
    .venv/bin/python bench/shared_data.py --images 25331 --processes 4

The dataset's arrays are built directly (random pixels, 80 % train / 20 % test, labels and paths as the cache
holds them): `study data synth` renders ~10 lesions/s at 224 px here, so 10,000 would take over 15 minutes,
and what is measured does not depend on the pixels. They are written both ways:

- `npz`: the cache as it was up to LOADER_VERSION 1 (`np.savez` of all arrays), read as its reader did
  (`np.load`, every array taken out of the archive: a private copy per process);
- `mapped`: the cache entry of today (`study.data.cache._save_cache`: one `.npy` per array), read by
  `study.data.cache._load_cache`, what `load_dataset` returns on a cache hit (images memory-mapped
  read-only, CRC-32 of every array checked on open).

For each, N processes start at once (`--processes`), import the loader, report their memory, then on a
signal all load the dataset concurrently, as N trials starting on one machine do, and touch every image (a sum
over all pixels, as an epoch reads them). The node's resident memory grown = the sum over the processes of
their PSS after loading minus before (/proc/PID/smaps_rollup; PSS divides a shared page between the
processes mapping it, so one copy mapped by N processes adds up to one copy). Printed: growth in GiB and in
copies of the dataset, each process's RSS, load seconds; last line `shared_data_ratio=<npz growth / mapped
growth>` (about N when every process holds its own copy and the mapped one is shared).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 2**30
ARRAYS = ("images", "labels", "paths")


def build(n_images: int, size: int, seed: int = 0):
    """A `DecodedData` of `n_images` random `size`-px images (80 % train), labels alternating."""
    from study.data import DecodedData, Split

    rng = np.random.default_rng(seed)
    n_train = int(round(n_images * 0.8))

    def split(n: int, name: str) -> Split:
        images = np.empty((n, size, size, 3), np.uint8)
        for i in range(0, n, 500):  # in chunks: no int64 temporary of the whole set
            images[i : i + 500] = rng.integers(0, 256, images[i : i + 500].shape, dtype=np.uint8)
        return Split(
            images, np.arange(n, dtype=np.int64) % 2, [f"{name}/benign/{i:06d}.jpg" for i in range(n)]
        )

    return DecodedData(
        split(n_train, "train"), split(n_images - n_train, "test"), "bench", "<memory>", size, []
    )


def write_npz(path: Path, data) -> None:
    """The LOADER_VERSION-1 cache file (its `_save_cache`, without the temporary-file rename)."""
    meta = {"notes": data.notes, "warnings": data.warnings, "fingerprint": data.fingerprint}
    arrays = {}
    for name, split in (("train", data.train), ("test", data.test)):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split.images, split.labels
        arrays[f"{name}_paths"] = np.array(split.paths, dtype=str)
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def load_npz(path: str) -> dict:
    """The LOADER_VERSION-1 reader (`_load_cache` up to that version): every array out of the archive."""
    with np.load(path, allow_pickle=False) as z:
        return {
            s: (z[f"{s}_images"], z[f"{s}_labels"], [str(p) for p in z[f"{s}_paths"]])
            for s in ("train", "test")
        }


def load_mapped(path: str, size: int) -> dict:
    """Today's reader, as `load_dataset` calls it on a cache hit."""
    from study.data import cache

    d = cache._load_cache(Path(path), "<memory>", "bench", size)
    return {s: (getattr(d, s).images, getattr(d, s).labels, getattr(d, s).paths) for s in ("train", "test")}


def memory(pid: int) -> dict[str, int]:
    """Rss, Pss, Pss_Anon, Pss_File of a process in bytes (/proc/PID/smaps_rollup)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(kind: str, path: str, size: int) -> None:
    """Wait for 'go', load the dataset and sum every image, print the result, wait for 'exit'."""
    if kind == "mapped":
        from study.data import cache  # noqa: F401  (imported before the baseline, as in a trial)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    data = load_npz(path) if kind == "npz" else load_mapped(path, size)
    loaded = time.perf_counter() - started
    total = 0
    for images, _, _ in data.values():
        for i in range(0, len(images), 256):
            total += int(images[i : i + 256].sum(dtype=np.uint64))
    print(
        json.dumps({"load_s": loaded, "touch_s": time.perf_counter() - started - loaded, "sum": total}),
        flush=True,
    )
    sys.stdin.readline()


def measure(kind: str, path: Path, size: int, processes: int) -> dict:
    """Start the processes, let them load at once, and return their memory before and after and timings."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", kind, str(path), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        before = [memory(p.pid) for p in procs]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        after = [memory(p.pid) for p in procs]
        for p in procs:
            p.stdin.write("exit\n")
            p.stdin.flush()
    finally:
        for p in procs:
            p.wait(60)
    if len({r["sum"] for r in results}) != 1:
        raise RuntimeError(f"{kind}: the processes read different pixels: {results}")
    grown = {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in after[0]}
    return {"grown": grown, "rss_after": [a["Rss"] for a in after], "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1,000 images")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.quick:
        args.images = 1000
    import platform

    from study.data import cache

    with tempfile.TemporaryDirectory(prefix="bench-shared-data-") as tmp:
        started = time.perf_counter()
        data = build(args.images, args.size)
        nbytes = data.train.images.nbytes + data.test.images.nbytes
        npz, entry = Path(tmp) / "v1.npz", Path(tmp) / "entry"
        write_npz(npz, data)
        cache._save_cache(entry, data)
        del data
        print(
            f"{args.images:,} images of {args.size} px ({nbytes / GIB:.2f} GiB of uint8 pixels), written both ways "
            f"in {time.perf_counter() - started:.0f} s; {args.processes} processes loading at once; "
            f"Python {platform.python_version()}, numpy {np.__version__}, {platform.platform()}\n"
        )
        rows = {
            kind: measure(kind, path, args.size, args.processes)
            for kind, path in (("npz", npz), ("mapped", entry))
        }
    print(
        f"{'cache':<8} {'PSS grown, GiB':>15} {'copies':>7} {'of which anon / file':>22} {'RSS each, GiB':>16} {'load s':>12}"
    )
    for kind, row in rows.items():
        g, load_s = row["grown"], [r["load_s"] for r in row["results"]]
        print(
            f"{kind:<8} {g['Pss'] / GIB:>15.2f} {g['Pss'] / nbytes:>7.2f} "
            f"{g.get('Pss_Anon', 0) / GIB:>10.2f} / {g.get('Pss_File', 0) / GIB:<9.2f} "
            f"{' '.join(f'{r / GIB:.2f}' for r in row['rss_after']):>16} "
            f"{' '.join(f'{s:.2f}' for s in load_s):>12}"
        )
    ratio = rows["npz"]["grown"]["Pss"] / rows["mapped"]["grown"]["Pss"]
    print(f"\nshared_data_ratio={ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
