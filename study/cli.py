"""The `study` command. Parses arguments, calls the runner, report or data tools, and turns known errors into
one-line messages (no stack traces for bad input or bad configs)."""

from __future__ import annotations

import argparse
import re
import sys
from textwrap import dedent

from study.analysis import AnalysisError
from study.data import DataError, DataSource, check_dataset
from study.data.synth import write_dataset
from study.report.write import write_report
from study.run.results import collect_from_experiment, edited_results
from study.run.rundir import open_run, publish
from study.spec.config import ConfigError
from study.spec.presets import describe_presets, get_preset
from study.spec.resolve import Flags, resolve_study
from study.spec.studyfile import to_toml

EXIT_BAD_CONFIG = 2
EXIT_BAD_DATA = 1


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_run_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument(
        "--preset",
        help=f"study preset (default: the study file's, else {default_preset}; see `study presets`)",
    )
    p.set_defaults(default_preset=default_preset)
    p.add_argument(
        "--config",
        metavar="STUDY.toml",
        help="a study file (TOML): preset, seeds, data, [trial] settings, [[arms]]; "
        "`study presets --show demo` prints one to start from",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting after the preset and the study file, e.g. --set trial.finetune_epochs=5 "
        "--set seeds=3 (repeatable; dotted keys reach tables)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="dataset folder DIR/{train,test}/{benign,malignant}/*.jpg "
        "(default: synthetic lesions generated into the cache)",
    )
    p.add_argument("--seeds", type=int, metavar="N", help="number of paired seeds (repetitions)")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Ray Tune's own console (trial tables, result dumps) instead of the study's progress display",
    )
    p.add_argument("--name", help="run name (default: PRESET-YYYYmmdd-HHMMSS)")
    p.add_argument(
        "--storage",
        metavar="PATH|URI",
        default="runs",
        help="where run directories go: a folder (NFS on a cluster) or s3://bucket/prefix (default: ./runs)",
    )
    p.add_argument(
        "--cpus-per-trial", type=float, metavar="C", help="CPUs per trial (also TensorFlow threads)"
    )
    p.add_argument("--gpus-per-trial", type=float, metavar="G", help="GPUs per trial (whole numbers)")
    p.add_argument(
        "--mixed-precision",
        choices=["on", "off"],
        help="bfloat16 compute (Keras mixed_bfloat16): ~1.3-1.5x faster for ResNet50 on CPUs with AVX-512 BF16 "
        "and on Ampere+ GPUs (default: the preset's; on in `paper`)",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="join a Ray cluster you started: HOST:PORT of its head, ray://HOST:PORT, or 'auto' (RAY_ADDRESS, "
        "else the `ray start` cluster of this machine); default: an embedded Ray on loopback",
    )
    p.add_argument("--no-report", action="store_true", help="skip writing report.md/report.html at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study",
        formatter_class=_formatter,
        description="Repeated-seed studies of self-supervised pre-training for melanoma classification.",
        epilog=dedent("""\
            examples:
              study run                                  # the demo study on synthetic lesions (~4-5 min, 2 CPUs)
              study run --preset smoke                   # tiny end-to-end check
              study run --data ../shared/data/isic9_binary --seeds 8
              study run --config my-study.toml --set trial.finetune_epochs=5
              study presets --show demo > my-study.toml  # a preset as a study file to edit
              study resume runs/demo-20260101-120000     # continue an interrupted run
              study report runs/demo-20260101-120000     # re-write report.md / report.html
              study search --samples 20                  # Optuna search on validation AUC
              study data synth /tmp/lesions --n-train 400 --n-test 100 --size 64 --seed 0
              study data check ../shared/data/isic9_binary
            """),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a study and write results + report",
        formatter_class=_formatter,
        epilog=dedent("""\
                             examples:
                               study run
                               study run --preset smoke --name smoke1
                               study run --data /data/isic --seeds 10 --storage /mnt/nfs/runs
                               study run --preset paper --data /data/isic --address auto
                             """),
    )
    _add_run_options(run, "demo")

    resume = sub.add_parser(
        "resume",
        help="continue an interrupted study",
        formatter_class=_formatter,
        epilog="example:\n  study resume runs/demo-20260101-120000\n",
    )
    resume.add_argument("run_dir", metavar="RUN_DIR")
    resume.add_argument("--address", metavar="ADDR")
    resume.add_argument("--no-report", action="store_true")
    resume.add_argument(
        "--trust-run-dir",
        action="store_true",
        help="restore a run whose Ray Tune state carries no signature of yours (copied from another machine "
        "or user): Tune's state holds pickled code, so only for a run whose source you trust",
    )

    extend = sub.add_parser(
        "extend",
        help="add seeds to a finished study: one more look at its primary comparisons",
        formatter_class=_formatter,
        epilog=dedent("""\
                      examples:
                        study extend runs/demo-20260101-120000 --seeds 6
                        study extend runs/demo-20260101-120000     # the next look the study declares
                      """),
    )
    extend.add_argument("run_dir", metavar="RUN_DIR")
    extend.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="seeds in all after this look (more than the run has); default: the study's next declared look",
    )
    extend.add_argument(
        "--seeds-per-look",
        type=int,
        metavar="K",
        help="reach --seeds in looks of K seeds each, analysed in turn; stops once every primary comparison is "
        "decided (unplanned looks only)",
    )
    extend.add_argument("--address", metavar="ADDR")
    extend.add_argument("--no-report", action="store_true")
    extend.add_argument(
        "--trust-run-dir",
        action="store_true",
        help="as for `study resume`: a run whose signatures are not yours",
    )

    search = sub.add_parser(
        "search",
        help="Optuna search over task parameters and learning rates",
        formatter_class=_formatter,
        epilog="examples:\n  study search --samples 20\n  study search --data /data/isic\n",
    )
    _add_run_options(search, "search")
    search.add_argument("--samples", type=int, metavar="N", help="number of Optuna trials")
    search.add_argument(
        "--asha", action="store_true", help="stop weak trials early with ASHA (on validation AUC)"
    )

    presets = sub.add_parser(
        "presets",
        help="list presets with launch commands and runtimes",
        formatter_class=_formatter,
        epilog="examples:\n  study presets\n  study presets --show demo > my-study.toml\n",
    )
    presets.add_argument("--show", metavar="NAME", help="print preset NAME as a study file to copy and edit")

    report = sub.add_parser(
        "report",
        help="write report.md and report.html for a run",
        formatter_class=_formatter,
        epilog="example:\n  study report runs/demo-20260101-120000 --metric test_auc\n",
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument(
        "--metric", default=None, help="headline metric (default: the run's declared one, else test_auc)"
    )
    report.add_argument(
        "--primary",
        metavar="REGIME[@FRACTION]",
        help="override the run's declared primary cell, e.g. patience3 or none@0.1 (the report says so)",
    )
    report.add_argument(
        "--margin",
        type=float,
        metavar="DELTA",
        help="override the declared equivalence margin (metric units)",
    )
    report.add_argument(
        "--family",
        choices=("primary", "study", "regime"),
        default="primary",
        help="Holm family of the comparison tables: the declared primary cell and one secondary family "
        "(default), every comparison of the study, or each regime; the verdicts always use the primary cell",
    )

    data = sub.add_parser(
        "data",
        help="dataset tools: synth, check",
        formatter_class=_formatter,
        epilog="examples:\n  study data synth /tmp/lesions --n-train 400 --n-test 100\n"
        "  study data check /tmp/lesions\n",
    )
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = dsub.add_parser(
        "synth",
        help="write a synthetic dermoscopy-like dataset",
        formatter_class=_formatter,
        epilog="example:\n  study data synth /tmp/lesions --n-train 400 --n-test 100 --size 64 --seed 0\n",
    )
    synth.add_argument("out", metavar="OUT")
    synth.add_argument("--n-train", type=int, default=400)
    synth.add_argument("--n-test", type=int, default=100)
    synth.add_argument("--size", type=int, default=64, help="image side in pixels, 16 to 1024 (default 64)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--malignant-fraction",
        type=float,
        default=0.35,
        help="share of malignant images, 0.05 to 0.95 (default 0.35)",
    )
    synth.add_argument(
        "--overwrite", action="store_true", help="replace an existing synthetic dataset in OUT"
    )
    check = dsub.add_parser(
        "check",
        help="check a dataset folder or labels CSV for problems and train/test leakage",
        formatter_class=_formatter,
        epilog="examples:\n  study data check /data/isic\n"
        "  study data check /data/isic2020/train.csv --images jpeg/train\n"
        "  study data check /data/ham10000/HAM10000_metadata.csv --images images --malignant mel\n",
    )
    check.add_argument("dir", metavar="DIR|CSV", help="a dataset folder, or a labels .csv file")
    check.add_argument(
        "--images",
        metavar="DIR",
        help="labels CSV only: the images folder, relative to the CSV's folder (default: its images/ "
        "folder if it exists, else the CSV's folder)",
    )
    check.add_argument(
        "--malignant",
        metavar="CLASS",
        action="append",
        default=[],
        help="labels CSV with a diagnosis column (dx, diagnosis) only: a class counted as malignant "
        "(repeat for several, e.g. --malignant mel)",
    )
    check.add_argument(
        "--all", action="store_true", help="list every warning (default: the first 50, then a count)"
    )
    return parser


def _run(args: argparse.Namespace, search: bool = False) -> int:
    from study.run import runner  # imports Ray: only for the commands that run a study

    flags = Flags(
        data=args.data,
        seeds=args.seeds,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        mixed_precision=None if args.mixed_precision is None else args.mixed_precision == "on",
        samples=args.samples if search else None,
        asha=(args.asha or None) if search else None,
    )
    preset = resolve_study(
        args.preset or None, args.config, args.set, flags, default_preset=args.default_preset
    )
    run_dir = runner.run_study(
        preset,
        storage=args.storage,
        name=args.name,
        address=args.address,
        write_report=not args.no_report,
        verbose=args.verbose,
    )
    print(f"Results: {run_dir / 'results.csv'}")
    if any(run_dir.glob("two_stage_trial_*")):  # trial logs are local (not with object storage)
        print(f"Curves:  tensorboard --logdir {run_dir}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "search":
        return _run(args, search=True)
    if args.command == "resume":
        from study.run import runner  # imports Ray: only for the commands that run a study

        run_dir = runner.resume_study(
            args.run_dir, address=args.address, write_report=not args.no_report, trust=args.trust_run_dir
        )
        print(f"Results: {run_dir / 'results.csv'}")
        return 0
    if args.command == "extend":
        from study.run import runner

        run_dir = runner.extend_study(
            args.run_dir,
            args.seeds,
            per_look=args.seeds_per_look,
            address=args.address,
            write_report=not args.no_report,
            trust=args.trust_run_dir,
        )
        print(f"Results: {run_dir / 'results.csv'}")
        return 0
    if args.command == "presets":
        if args.show:
            print(to_toml(get_preset(args.show), shipped=args.show), end="")
        else:
            print(describe_presets())
        return 0
    if args.command == "report":
        run_uri, run_dir = open_run(args.run_dir)
        warnings: list[str] = []
        if not (run_dir / "results.csv").exists():
            # A run whose driver stopped before writing its tables: read them from Tune's JSON trial records.
            collect_from_experiment(run_uri)
        else:  # a table edited after the run is reported as such (README, "Security")
            warnings = edited_results(run_uri, run_dir)
        for line in warnings:
            print(f"study: warning: {line}", file=sys.stderr)
        primary = _primary_flag(args.primary)
        if primary is not None or args.margin is not None:
            print(
                "Note: --primary/--margin override the primary analysis the run declared; the report says so."
            )
        md, html = write_report(
            run_dir,
            metric=args.metric,
            family=args.family,
            primary=primary,
            margin=args.margin,
            warnings=warnings,
        )
        print(f"Report: {md}\n        {html}")
        publish(run_dir, run_uri)
        return 0
    if args.command == "data":
        if args.data_command == "synth":
            try:
                counts = write_dataset(
                    args.out,
                    args.n_train,
                    args.n_test,
                    args.size,
                    args.seed,
                    malignant_fraction=args.malignant_fraction,
                    overwrite=args.overwrite,
                )
            except ValueError as exc:  # the library's message, in the flags' words
                raise ConfigError(_synth_flags(str(exc))) from None
            print(f"Wrote {args.out}: {counts}")
            return 0
        report = check_dataset(DataSource(args.dir, args.images, tuple(args.malignant)))
        print(report.format(all_warnings=args.all))
        return 0 if report.ok else EXIT_BAD_DATA
    raise AssertionError(args.command)


# write_dataset's parameter names -> `study data synth`'s flags, for its error messages.
_SYNTH_FLAGS = {
    "n_train": "--n-train",
    "n_test": "--n-test",
    "malignant_fraction": "--malignant-fraction",
    "overwrite=True": "--overwrite",
    "size": "--size",
    "seed": "--seed",
}


def _primary_flag(value: str | None) -> tuple[str, float | None] | None:
    """`--primary REGIME[@FRACTION]` as (regime, fraction or None)."""
    if value is None:
        return None
    regime, _, fraction = value.partition("@")
    try:
        return regime, float(fraction) if fraction else None
    except ValueError:
        raise ConfigError(
            f"--primary: {value!r} is not REGIME[@FRACTION], e.g. patience3 or none@0.1"
        ) from None


def _synth_flags(message: str) -> str:
    message = message.removeprefix("write_dataset: ")
    for name, flag in _SYNTH_FLAGS.items():
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, message)
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except DataError as exc:
        print(f"study: data error: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA
    except AnalysisError as exc:  # a results.csv / history.csv the report cannot read
        print(f"study: results error: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA
    except KeyboardInterrupt as exc:
        # Only a run whose Tune state exists can be resumed: the runner names it (StudyInterrupted), or it is
        # the run being resumed. Stopped earlier (checks, data, Ray's start), there is nothing to resume.
        run_dir = getattr(exc, "run_dir", None) or (
            args.run_dir if args.command in ("resume", "extend") else None
        )
        if run_dir is None:
            print("\nstudy: interrupted before any trial started; nothing to resume.", file=sys.stderr)
            return 130
        print(
            f"\nstudy: interrupted; finished trials and checkpoints are kept. Continue with:\n"
            f"  study resume {run_dir}",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
