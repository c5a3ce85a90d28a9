"""Training compute: images/s of the project's training path vs a plain `model.fit`, with precision, XLA and
oneDNN variants, side by side.

Run from the repository root:

    .venv/bin/python bench/compute.py                  # ResNet50 @ 224 and small @ 64 px, ~10 min on 2 cores
    .venv/bin/python bench/compute.py --quick          # small encoder @ 64 px only, 2 timed epochs (~1-2 min)
    .venv/bin/python bench/compute.py --all            # adds bf16+XLA and bf16 without oneDNN (slow on CPU)
    .venv/bin/python bench/compute.py --cases resnet50:224:32:16 --repeats 5

A case is ENCODER:PX:TRAIN_IMAGES:BATCH (default: resnet50:224:32:16 and small:64:256:32; the small encoder
has TrialConfig's default widths 16/32/64/128). Random-pixel images; one "epoch" = one pass over the
training images. Each group of variants runs in its own Python process, because TF_ENABLE_ONEDNN_OPTS is read
when TensorFlow is imported and op determinism is process-wide:

| group     | process settings                              | variants (models trained in it)               |
|-----------|-----------------------------------------------|-----------------------------------------------|
| project   | oneDNN on, op determinism on (as every trial) | ours fp32, ours bf16, plain fp32, plain bf16  |
| xla       | oneDNN on, op determinism OFF (see below)     | plain fp32, plain fp32 XLA [, plain bf16 XLA] |
| no-onednn | TF_ENABLE_ONEDNN_OPTS=0, determinism on       | plain fp32 [, plain bf16]                     |

"ours" = `training.run_finetune` (the project's fine-tune loop: one `model.fit` per epoch on a per-epoch
permutation of uint8 images, then validation + test prediction), timed by its own `timings[i]["fit_s"]`
(training only). "plain" = the same architecture (`models.build_model`), `model.compile(Adam,
binary_crossentropy[, jit_compile=True])` and `model.fit(x, y, epochs=1)` with Keras' own shuffling, on the
same training images. Within a process the models are interleaved epoch by epoch (after each of our epochs,
`on_epoch` trains every plain model for one epoch; the plain models live across both of our runs), so they
share the machine's load. Every model's first epoch (tracing) is dropped, and so is the plain round after the
first epoch of each of our runs (until 2026-11-30 `run_finetune` started with `clear_session()` /
`set_random_seed()`, which made the plain models re-instantiate their train functions too: ~1 s for the small
encoder; phases no longer clear TensorFlow's caches, and the round is still dropped). "x vs plain fp32" is the median
over interleaving rounds of (plain fp32 seconds / variant seconds) in the same round, same process.
Comparisons across processes (determinism, oneDNN off) use medians and are less trustworthy on a shared
machine.

XLA needs op determinism off: Keras 3.15 turns `jit_compile=True` off (only a UserWarning) when
`tf.config.experimental.enable_op_determinism()` is on (`keras.src.trainers.trainer.model_supports_jit`), and
the project's `configure_tensorflow` turns it on in every trial. So XLA is measured in a non-deterministic
process next to a non-deterministic plain fp32 model.

Headline (last line): `resnet50_bf16_speedup` = speed-up of `mixed_precision=True` over float32 in the
project's path for ResNet50 @ 224 px: median(plain fp32 / ours bf16) during the bf16 run divided by
median(plain fp32 / ours fp32) during the fp32 run (both paired with the same plain fp32 model). `nan` when
no ResNet50 @ 224 case ran (e.g. --quick).

Accuracy check for mixed precision (not run here; needs two studies): the smoke preset with bfloat16 off and
on, same seeds, then compare per (arm, seed, regime) the test metrics in results.csv:
    study run --preset smoke --name smoke-fp32 && study run --preset smoke --mixed-precision on --name smoke-bf16
"""

from __future__ import annotations

import argparse
import os
import time

import benchutil

DEFAULT_CASES = ("resnet50:224:32:16", "small:64:256:32")
QUICK_CASES = ("small:64:64:32",)
GROUPS = ("project", "xla", "no-onednn")


def parse_case(text: str) -> tuple[str, int, int, int]:
    encoder, size, n, batch = text.split(":")
    return encoder, int(size), int(n), int(batch)


# ------------------------------------------------------------------------------------------ child process
def child(group: str, case: str, repeats: int, threads: int, all_variants: bool) -> dict:
    """Run one group of variants for one case in this (fresh) process; seconds per timed epoch."""
    import keras
    import numpy as np

    from study.spec.config import TrialConfig
    from study.train import models, splits
    from study.train import phases as training

    encoder, size, n_train, batch = parse_case(case)
    training.configure_tensorflow(threads, deterministic=group != "xla")
    keras.utils.set_random_seed(0)
    data = benchutil.synthetic_data(size, n_train)
    base = TrialConfig(
        encoder=encoder,
        image_size=size,
        batch_size=batch,
        lr=1e-4,
        finetune_epochs=repeats + 1,
        patiences=(0,),
        threads=threads,
        seed=0,
    )
    train_rows, _ = splits.validation_split(base, data)
    x, y = data.train.images[train_rows], data.train.labels[train_rows].astype(np.float32)

    def plain(mixed: bool, jit: bool = False) -> keras.Model:
        enc = models.build_encoder(encoder, size, base.encoder_widths, mixed_precision=mixed)
        model = models.build_model("classification", enc, mixed_precision=mixed)
        model.compile(optimizer=keras.optimizers.Adam(base.lr), loss="binary_crossentropy", jit_compile=jit)
        if jit and not model.jit_compile:
            raise RuntimeError("Keras turned jit_compile off (op determinism on?)")
        return model

    specs = {
        "project": {"plain fp32": (False, False), "plain bf16": (True, False)},  # + ours fp32/bf16
        "xla": {"plain fp32": (False, False), "plain fp32 xla": (False, True)},
        "no-onednn": {"plain fp32": (False, False)},
    }[group]
    if all_variants and group == "xla":
        specs["plain bf16 xla"] = (True, True)
    if all_variants and group == "no-onednn":
        specs["plain bf16"] = (True, False)
    plain_models = {name: plain(*spec) for name, spec in specs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in plain_models}

    def plain_round() -> None:
        for name, model in plain_models.items():
            t0 = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - t0)

    out: dict = {"n_train": int(len(x)), "pairs": {}}
    # Every model's first round is dropped, and in the project group also the first round of each of our
    # runs: run_finetune's clear_session() and set_random_seed() make Keras retrace the plain models too.
    if group == "project":
        kept: dict[str, list[float]] = {name: [] for name in plain_models}
        for mixed in (False, True):
            label = "ours bf16" if mixed else "ours fp32"
            for name in plain_models:
                seconds[name] = []
            result = training.run_finetune(
                base.replace(mixed_precision=mixed), data, on_epoch=lambda e, logs, save: plain_round()
            )
            assert len(result.train_index) == len(x)
            ours = [t["fit_s"] for t in result.timings][1:]
            # plain round i runs right after our epoch i: pair them
            out["pairs"][label] = list(zip(ours, seconds["plain fp32"][1:]))
            kept[label] = ours
            for name in plain_models:
                kept[name] += seconds[name][1:]
        seconds = kept
    else:
        for _ in range(repeats + 1):
            plain_round()
        seconds = {name: v[1:] for name, v in seconds.items()}
    for name in plain_models:
        if name != "plain fp32":
            out["pairs"][name] = list(zip(seconds[name], seconds["plain fp32"]))
    out["seconds"] = seconds
    return out


# ------------------------------------------------------------------------------------------ parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per model after 1 warm-up")
    parser.add_argument("--quick", action="store_true", help="small @ 64 px, 64 images, 2 timed epochs")
    parser.add_argument("--cases", nargs="+", default=None, help="ENCODER:PX:TRAIN_IMAGES:BATCH ...")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--all", action="store_true", help="also bf16+XLA and bf16 without oneDNN")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="TensorFlow threads")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    parser.add_argument("--child", nargs=2, metavar=("GROUP", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        benchutil.emit_result(child(args.child[0], args.child[1], args.repeats, args.threads, args.all))
        return
    if args.quick:
        args.repeats = 2
        args.cases = args.cases or list(QUICK_CASES)
    cases = args.cases or list(DEFAULT_CASES)
    print(
        f"training images/s, min / median / max over {args.repeats} timed epochs after 1 warm-up; "
        f"threads={args.threads}; x = median paired speed-up vs plain fp32 in the same process"
    )
    print(f"{'case':<22} {'group':<10} {'variant':<16} {'img/s':>26} {'x vs plain fp32':>16}")
    results: dict[tuple[str, str], dict] = {}
    for case in cases:
        encoder, size, n_train, batch = parse_case(case)
        label = f"{encoder}@{size} n={n_train} b={batch}"
        for group in args.groups:
            env = {"TF_ENABLE_ONEDNN_OPTS": "0" if group == "no-onednn" else "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
            argv = [os.path.abspath(__file__), "--child", group, case, "--repeats", str(args.repeats)]
            argv += ["--threads", str(args.threads)] + (["--all"] if args.all else [])
            t0 = time.perf_counter()
            try:
                res = benchutil.run_child(argv, env=env, timeout=args.timeout)
            except Exception as exc:  # one failing group (e.g. XLA) must not lose the others
                print(f"{label:<22} {group:<10} FAILED: {str(exc).splitlines()[-1][:200]}", flush=True)
                continue
            results[(case, group)] = res
            n = res["n_train"]
            for name, secs in res["seconds"].items():
                rates = [n / s for s in secs]
                pairs = res["pairs"].get(name)
                x = f"{benchutil.median([ref / s for s, ref in pairs]):.3f}x" if pairs else "ref"
                print(
                    f"{label:<22} {group:<10} {name:<16} {benchutil.fmt_mmm(rates, '7.2f'):>26} {x:>16}",
                    flush=True,
                )
            print(f"{'':<22} {group:<10} (process wall {time.perf_counter() - t0:.0f} s)", flush=True)

    print()
    headline = float("nan")
    for case in cases:
        encoder, size, _, _ = parse_case(case)
        tag = f"{encoder}_{size}"
        summary = summarize(results, case)
        for key, value in summary.items():
            print(f"{tag}_{key}={value:.3f}")
        if encoder == "resnet50" and size == 224 and "bf16_speedup" in summary:
            headline = summary["bf16_speedup"]
    print(f"resnet50_bf16_speedup={headline:.2f}")


def summarize(results: dict, case: str) -> dict[str, float]:
    """Speed-ups for one case (ratios > 1 mean faster than the reference)."""
    med = benchutil.median
    out: dict[str, float] = {}
    proj, xla, nod = (results.get((case, g)) for g in GROUPS)

    def paired(res, name):
        pairs = res["pairs"].get(name) if res else None
        return med([ref / s for s, ref in pairs]) if pairs else None

    if proj:
        ours32, ours16 = paired(proj, "ours fp32"), paired(proj, "ours bf16")
        if ours32 and ours16:
            out["ours_fp32_vs_plain_fp32"] = ours32
            out["ours_bf16_vs_plain_fp32"] = ours16
            out["bf16_speedup"] = ours16 / ours32  # ours bf16 vs ours fp32, both via the same plain model
        if paired(proj, "plain bf16"):
            out["plain_bf16_speedup"] = paired(proj, "plain bf16")
    if xla and paired(xla, "plain fp32 xla"):
        out["xla_fp32_speedup"] = paired(xla, "plain fp32 xla")
    if xla and paired(xla, "plain bf16 xla"):
        out["xla_bf16_vs_fp32"] = paired(xla, "plain bf16 xla")
    if proj and xla:  # across processes: determinism on (project) vs off (xla group), plain fp32 medians
        ref = med(proj["seconds"]["plain fp32"])
        out["determinism_off_speedup"] = ref / med(xla["seconds"]["plain fp32"])
    if proj and nod:  # across processes: oneDNN off vs on, plain fp32 medians (< 1: oneDNN helps)
        out["onednn_off_vs_on"] = med(proj["seconds"]["plain fp32"]) / med(nod["seconds"]["plain fp32"])
    return out


if __name__ == "__main__":
    main()
