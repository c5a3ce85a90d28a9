"""Study presets: `StudyPreset` (a complete study), `SearchSettings` (an Optuna search) and the shipped presets.

A preset is one `StudyPreset` built by a function whose docstring gives the launch command and the expected
runtime (`study presets` prints them). `study.spec.resolve.resolve_study` turns a preset, a study file and
flags into the study that runs; `study.search_spaces` turns that into Ray Tune's param space.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable

from study.spec.config import (
    MAX_BATCH_SIZE,
    MAX_SEED,
    MAX_THREADS,
    PHASES,
    Bounds,
    ConfigError,
    TrialConfig,
    bounded,
    phase_values,
)
from study.tasks.contrastive import BYOL, SIMCLR
from study.tasks.paper import CORRUPTION, MISSING_PATCH, ROTATION

#: The pretext tasks the paper compares (its Table 1), from their registered definitions.
PAPER_TASKS = (ROTATION.name, MISSING_PATCH.name, CORRUPTION.name)

#: The largest grid a study may have, and the most trials of a search. Ray builds every trial up front (400,000
#: trials take minutes, ignoring Ctrl-C); a paired study needs tens of seeds, not thousands.
MAX_TRIALS = 2000
#: The most planned looks of a study (`AnalysisPlan.looks`): each look's boundary integrates over every earlier
#: one, and a look costs an extension's start-up; a paired study of tens of seeds needs a handful.
MAX_LOOKS = 20
#: The most GPUs one trial may ask for (a node's worth); fractions are refused (`StudyPreset.gpus_per_trial`).
MAX_GPUS_PER_TRIAL = 16
#: Retries of a failed trial: Ray's -1 (retry forever) would never end a study whose trial always fails.
MAX_FAILURES = 100
_LR_RANGE = Bounds(
    low=0, high=1, low_open=True, rule="must be a range [low, high] of learning rates in (0, 1]"
)


@dataclass(frozen=True)
class SearchSettings:
    """Optuna search over task parameters and learning rates (`study search`).

    Each task parameter is searched over its registered range (`study.tasks.registry.Param.search`);
    `param_ranges` replaces a range by parameter name, `(low, high)` in the registered range's units
    (fractions of the image side for a relative one, such as `patch_size`). `pretext_batch_sizes`: choices of
    the pretext phase's batch size, searched for every task but the baseline (SimCLR's negatives per view are
    2B - 2, so B matters to it more than to the paper's tasks); empty: every trial keeps the preset's
    `pretext_batch_size`.
    """

    num_samples: int = bounded(20, Bounds(1, MAX_TRIALS, integer=True))
    tasks: tuple[str, ...] = PAPER_TASKS
    lr_range: tuple[float, float] = bounded((1e-4, 1e-2), _LR_RANGE)
    pretext_lr_range: tuple[float, float] = bounded((1e-4, 1e-2), _LR_RANGE)
    param_ranges: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    pretext_batch_sizes: tuple[int, ...] = bounded(
        (), Bounds(1, MAX_BATCH_SIZE, integer=True, distinct=True, item="a batch size")
    )
    asha: bool = False
    # Optimise validation AUC of the fine-tune phase at the epoch this patience regime keeps; never a test metric.
    metric: str = "val_auc"
    searcher_seed: int = bounded(0, Bounds(0, MAX_SEED, integer=True))

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tune checkpoints the searcher with these settings pickled in it: `study resume` of a search run made
        # before the ranges moved into `param_ranges` unpickles the fields of then.
        state = upgrade_search_keys(state)
        state["param_ranges"] = {k: tuple(v) for k, v in (state.get("param_ranges") or {}).items()}
        self.__dict__.update(state)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSettings":
        """From `dataclasses.asdict` output (a run's `study.json`), lists back to tuples; see `upgrade_search_keys`."""
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in upgrade_search_keys(d).items()}
        d["param_ranges"] = {k: tuple(v) for k, v in (d.get("param_ranges") or {}).items()}
        return cls(**d)


#: Search settings of earlier versions, one range per parameter before ranges came from the task registry.
LEGACY_RANGE_KEYS = {
    "patch_fraction_range": "patch_size",
    "swap_count_range": "swap_count",
    "swap_fraction_range": "swap_patch_size",
}


def upgrade_search_keys(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of a `[search]` table or saved `SearchSettings` dict with the ranges of earlier versions
    (`patch_fraction_range = [0.15, 0.5]`, ...) moved into `param_ranges`, in the same units."""
    d = dict(d)
    ranges = dict(d.get("param_ranges") or {})
    for old, name in LEGACY_RANGE_KEYS.items():
        if old in d:
            ranges.setdefault(name, d.pop(old))
    if ranges:
        d["param_ranges"] = ranges
    return d


@dataclass(frozen=True)
class AnalysisPlan:
    """The primary analysis, declared before the study runs (a study file's `[analysis]` table).

    `metric`: the results column the verdicts are about. `primary_regime`: the early-stopping regime of the
    primary comparisons (`none`, `patience3`, ...; None: the longest patience the study runs, filled in when the
    study is resolved). `primary_fraction`: with label fractions, the fraction of the primary comparisons (None:
    the smallest, where pre-training is expected to matter most). The primary family is every SSL arm against
    the baseline in that one cell (m = SSL arms); every other cell is secondary and exploratory.
    `equivalence_margin` (delta, in the metric's units: 0.02 = 2 AUC points): a difference within +-delta does
    not matter in practice; an arm whose paired difference is shown to lie within it is "equivalent".
    `alpha`: the level of every test of the verdicts. `looks`: planned looks, seed counts at which the primary
    comparisons are tested as seeds accrue (`study extend`), increasing, the last the most seeds the study
    runs; alpha is spent over them (`study.looks`) and a decided comparison's arm runs no further seeds.
    Empty: no planned looks (one analysis; an extension then gets the conservative correction for unplanned
    looks).
    """

    metric: str = "test_auc"
    primary_regime: str | None = None
    primary_fraction: float | None = bounded(None, Bounds(0, 1, low_open=True, optional=True))
    equivalence_margin: float = bounded(
        0.02,
        Bounds(
            0, low_open=True, rule="must be a positive number in the metric's units (0.02 = 2 AUC points)"
        ),
    )
    alpha: float = bounded(0.05, Bounds(0, 0.5, True, True, rule="must lie in (0, 0.5)"))
    looks: tuple[int, ...] = bounded(
        (),
        Bounds(
            2,
            MAX_TRIALS,
            integer=True,
            distinct=True,
            item="a look",
            rule=f"must be a seed count from 2 to {MAX_TRIALS}",
            hint="e.g. looks = [10, 20, 30] (a paired SD needs 2 seeds)",
        ),
    )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AnalysisPlan":
        d = dict(d or {})
        if "looks" in d:
            d["looks"] = tuple(d["looks"])
        return cls(**d)


@dataclass(frozen=True)
class StudyPreset:
    """A complete study: fixed trial settings, the arms compared, the seeds, and how to schedule trials."""

    name: str
    base: TrialConfig
    arms: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...] = bounded(
        dataclasses.MISSING, Bounds(0, MAX_SEED, integer=True, distinct=True, item="a seed")
    )
    # A fraction would pack several 1-thread trials on a core, slower than one at a time.
    cpus_per_trial: float = bounded(
        1,
        Bounds(
            1,
            MAX_THREADS,
            whole=True,
            rule=f"give a whole number of cores from 1 to {MAX_THREADS}",
            hint="each trial runs that many TensorFlow threads",
        ),
    )
    # The same rule for a study file and --gpus-per-trial: TensorFlow cannot share a GPU between processes
    # reliably (ray issue #10677), so a fraction is refused wherever it is given.
    gpus_per_trial: float = bounded(
        0,
        Bounds(
            0,
            MAX_GPUS_PER_TRIAL,
            whole=True,
            rule=f"give 0 or a whole number of GPUs up to {MAX_GPUS_PER_TRIAL}",
            hint="fractional GPUs fail with TensorFlow (ray issue #10677)",
        ),
    )
    max_concurrent_trials: int | None = bounded(
        None,
        Bounds(1, MAX_TRIALS, integer=True, optional=True, hint="or leave it unset (as resources allow)"),
    )
    needs_gpu: bool = False
    needs_data: bool = False
    search: SearchSettings | None = None
    max_failures: int = bounded(
        2,
        Bounds(
            0, MAX_FAILURES, integer=True, hint="retries of a failed trial (Ray's -1, forever, is refused)"
        ),
    )
    runtime_note: str = ""
    # The Keras backend every trial runs on: "tensorflow", "jax" or "torch" (`spec.backend.BACKENDS`). None: the
    # environment's (KERAS_BACKEND, else keras.json, else TensorFlow); `finalize_study` fills it in, so a run's
    # study.json names it and `study resume` runs on it.
    backend: str | None = None
    # Label-efficiency grid: fine-tune on each fraction of the training labels (None: `base.label_fraction`).
    label_fractions: tuple[float, ...] | None = bounded(
        None,
        Bounds(
            0,
            1,
            low_open=True,
            optional=True,
            distinct=True,
            item="a fraction",
            rule="must be in (0, 1], e.g. [0.05, 0.2, 1.0]",
        ),
    )
    # The declared primary analysis (`AnalysisPlan`); a run's study.json without one (older runs) gets the defaults.
    analysis: AnalysisPlan = AnalysisPlan()  # DEFAULT_ANALYSIS

    def replace(self, **changes: Any) -> "StudyPreset":
        return dataclasses.replace(self, **changes)

    def with_seeds(self, n: int) -> "StudyPreset":
        return self.replace(seeds=tuple(range(n)))

    def fractions(self) -> tuple[float, ...]:
        """The label fractions the study fine-tunes on (one, `base.label_fraction`, unless a grid is set)."""
        return self.label_fractions or (self.base.label_fraction,)

    def trial_configs(self) -> list[TrialConfig]:
        """Every trial of the grid, in Tune's order (arm fastest, then seed, then fraction)."""
        return [
            self.base.replace(**arm, seed=s, label_fraction=f)
            for f in self.fractions()
            for s in self.seeds
            for arm in self.arms
        ]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["base"] = self.base.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyPreset":
        """From `to_dict`'s output (a run's `study.json`), lists back to tuples."""
        d = dict(d)
        d["base"] = TrialConfig.from_dict(d["base"])
        d["arms"] = tuple(d["arms"])
        d["seeds"] = tuple(d["seeds"])
        if d.get("label_fractions") is not None:
            d["label_fractions"] = tuple(d["label_fractions"])
        if d.get("search") is not None:
            d["search"] = SearchSettings.from_dict(d["search"])
        d["analysis"] = AnalysisPlan.from_dict(d.get("analysis"))
        return cls(**d)


#: The primary analysis every comparison preset declares: test AUC in the longest-patience regime (early
#: stopping on validation loss with a generous patience is how a practitioner would train the classifier, and
#: it is the regime least moved by one noisy epoch), at the smallest label fraction when there are several
#: (where pre-training is expected to matter most), and an equivalence margin of +-2 AUC points: a pretext
#: phase costs 1.3-2x a fine-tune's compute (README, "SimCLR, BYOL and what pre-training costs"), and a gain
#: below 2 points is within the seed-to-seed spread of one test set of a few hundred images, too small to
#: change which model a clinic would deploy. Override per study in `[analysis]`.
DEFAULT_ANALYSIS = AnalysisPlan()


def arm_name(arm: dict[str, Any], varied: set[str] = frozenset()) -> str:
    """The label of an arm in tables: `baseline`, a task name, or `task(param=value)` when parameters vary."""
    task = arm["task"]
    shown = [f"{k}={arm[k]}" for k in sorted(arm) if k != "task" and k in varied and arm.get(k) is not None]
    if task == "none":
        return f"baseline({', '.join(shown)})" if shown else "baseline"
    return f"{task}({', '.join(shown)})" if shown else task


def repeated_arm(base: TrialConfig, arms: tuple[dict[str, Any], ...]) -> tuple[int, int] | None:
    """(i, j), 1-based, of the first arm j that trains what an earlier arm i does (the same trial settings:
    task, task parameters with defaults filled in at the image size, and any other setting an arm built in code
    holds, such as `lr`); None when every arm differs. Arms must be valid."""
    seen: dict[str, int] = {}
    for j, arm in enumerate(arms, start=1):
        key = json.dumps(phase_values(base.replace(**arm), *PHASES), sort_keys=True, default=str)
        if key in seen:
            return seen[key], j
        seen[key] = j
    return None


# The paper's four arms. Their task parameters are left to the registry's defaults (75 px patch, 100 swaps of
# 30 px at 224 px), scaled to the trial's image size when the trial runs.
PAPER_ARMS = tuple({"task": t} for t in ("none", *PAPER_TASKS))


def demo() -> StudyPreset:
    """Embedded default study on synthetic lesions: 4 arms x 3 regimes x 9 seeds, small encoder at 32 px.

    Launch: `study run` (same as `study run --preset demo`).
    Expected runtime: about 4-5 minutes on 2 CPU cores (BENCHMARKS.md, "Demo study"), no GPU, no data
    download (the lesions are generated into the cache directory on first use). 9 seeds is the smallest n at
    which an exact Wilcoxon can pass Holm over the study's 9 comparisons (2/2^9 < 0.05/9). Both image
    pretexts beat their learning-free references on every seed; rotation cannot on these rotation-symmetric
    lesions, and the report says so. Primary analysis (`DEFAULT_ANALYSIS`): test AUC at patience 10, margin
    +-2 AUC points, so the verdicts are Holm over the 3 SSL arms.
    """
    size = 32
    return StudyPreset(
        name="demo",
        base=TrialConfig(
            image_size=size,
            synth_n_train=500,
            synth_n_test=200,
            encoder="small",
            encoder_widths=(8, 16, 32, 64),
            # Stride 8 keeps a 4x4 map at 32 px (stride 32 left 1x1, from which no decoder rebuilds an image),
            # and BatchNorm momentum 0.9 lets the moving statistics settle within ~50 pretext steps: with
            # both, each image pretext beats its learning-free reference (references.py); without, none did.
            encoder_stride=8,
            bn_momentum=0.9,
            pretext_epochs=4,
            pretext_lr=1e-3,
            finetune_epochs=16,
            # A checkpoint costs ~10-20 % of a fine-tune epoch here: every 4 epochs (a resume redoes at most 4).
            checkpoint_every=4,
            # An intermediate result (~10 ms round trip to the driver) with each checkpoint, not every ~0.1 s
            # epoch; the final result holds every epoch's logs (the learning curves are complete).
            report_every=4,
            lr=1e-3,
            batch_size=32,
            patiences=(0, 3, 10),
            threads=1,
        ),
        arms=PAPER_ARMS,
        seeds=tuple(range(9)),
        cpus_per_trial=1,
        runtime_note="~4-5 min on 2 CPU cores",
    )


# The paper's arms and its proposed future work (SimCLR, BYOL: study.tasks.contrastive), for the cost-benefit study.
SIX_ARMS = (*PAPER_ARMS, {"task": SIMCLR.name}, {"task": BYOL.name})


def six_arms() -> StudyPreset:
    """The paper's four arms plus SimCLR and BYOL on the demo's synthetic lesions: 6 arms x 3 regimes x 10 seeds.

    Launch: `study run --preset six-arms` (add `--data DIR` for real images).
    Expected runtime: about 10-12 minutes on 2 CPU cores (BENCHMARKS.md, "Six arms"), no GPU, no download.
    The demo's settings (small encoder at 32 px, 4 pretext and 16 fine-tune epochs); SimCLR and BYOL with
    their registry defaults (batch 32, mild views for small images: study.tasks.contrastive). The report adds each
    task's learned-vs-reference verdict (contrastive top-1 against the encoder before its phase) and the
    cost-benefit table (pretext CPU-hours, paired AUC gain with its CI, gain per CPU-hour). 10 seeds: the
    smallest n at which an exact Wilcoxon can pass Holm over the study's 15 comparisons (2/2^10 < 0.05/15).
    """
    base = demo()
    return base.replace(
        name="six-arms",
        arms=SIX_ARMS,
        seeds=tuple(range(10)),
        runtime_note="~10-12 min on 2 CPU cores",
    )


def smoke() -> StudyPreset:
    """The demo's code path shrunk for tests: 4 arms x 2 seeds, tiny data, 1 pretext and 3 fine-tune epochs.

    Launch: `study run --preset smoke`.
    Expected runtime: well under a minute of training; about 1 minute with Ray start-up on 2 CPU cores.
    """
    base = demo()
    return base.replace(
        name="smoke",
        base=base.base.replace(
            synth_n_train=80,
            synth_n_test=40,
            encoder_widths=(4, 8, 8, 16),
            pretext_epochs=1,
            finetune_epochs=3,
            batch_size=16,
            pretext_batch_size=16,
            patiences=(0, 1, 2),
            checkpoint_every=1,  # every epoch of its 3: the resume tests restart from each
        ),
        seeds=(0, 1),
        runtime_note="<1 min of training",
    )


def cpu_real() -> StudyPreset:
    """A real dermoscopy dataset of ~1-6k images on a 2-core machine: 4 arms x 3 regimes x 9 seeds at 64 px.

    Launch: `study run --preset cpu-real --data DIR_OR_LABELS_CSV` (e.g. `--data ../shared/data/isic9_binary`).
    Expected runtime: about 30 minutes on 2 CPU cores for the 1,331 training images of the ISIC sample
    (README, "A real dataset on a CPU"); time grows about linearly with the number of training images.
    Small encoder (widths 8-64, output stride 8, BatchNorm momentum 0.9), 5 pretext and 16 fine-tune epochs
    at lr 1e-3; the paper's task parameters scaled to 64 px. Both image pretexts beat their learning-free
    references on the ISIC sample; rotation does not (dermoscopy has no canonical orientation), and the
    report says so. 9 seeds: the smallest n at which an exact Wilcoxon can pass Holm over 9 comparisons.
    """
    size = 64
    demo_base = demo().base
    return StudyPreset(
        name="cpu-real",
        base=demo_base.replace(
            image_size=size,
            encoder_widths=(8, 16, 32, 64),
            pretext_epochs=5,
            finetune_epochs=16,
        ),
        arms=PAPER_ARMS,
        seeds=tuple(range(9)),
        cpus_per_trial=1,
        needs_data=True,
        runtime_note="~30 min on 2 CPU cores for ~1.3k training images; --data required",
    )


def paper() -> StudyPreset:
    """The paper's design repeated over seeds: ImageNet ResNet50 at 224 px, Adam lr 0.01, MSE, 100 epochs.

    Patch 75 px, 100 swaps of 30 px, validation split 0.2, regimes none / patience 3 / patience 10,
    4 arms x 10 seeds = 40 trials (30 pretext phases + 40 fine-tunes).
    Initialisation as in the paper: every encoder is "a ResNet50 utilizing pre-trained ImageNet weights" (its
    section II.C) and the baseline is "a separate ResNet model solely utilizing ImageNet weights" (II.F). So
    the baseline fine-tunes the ImageNet ResNet50, and each pretext arm trains its task from the ImageNet
    weights, then fine-tunes from the pretext's weights (ImageNet + pretext). The weights file
    comes from `weights_path`, else Keras' cache, else Keras' download on an online machine; offline without
    the file the study stops before any trial with one line naming it. Random init is a choice in a study
    file: `[trial] weights = "random"`.
    Launch: `study run --preset paper --data /data/melanoma --storage /shared/runs --address auto`
    (on a GPU cluster; see README "Run on a cluster").
    Expected runtime (estimate, BENCHMARKS.md): 1-2 GPU-hours per trial on one A10G-class GPU, about 67
    GPU-hours in all: 9-10 hours on 8 GPU workers.
    Needs a real dataset (`--data`) and GPUs (`--gpus-per-trial 1` is the default).
    """
    size = 224
    return StudyPreset(
        name="paper",
        base=TrialConfig(
            image_size=size,
            encoder="resnet50",
            weights="imagenet",
            pretext_epochs=100,
            pretext_lr=0.01,
            finetune_epochs=100,
            lr=0.01,
            batch_size=32,
            pretext_batch_size=32,
            patiences=(0, 3, 10),
            threads=4,
            mixed_precision=True,
        ),
        arms=PAPER_ARMS,
        seeds=tuple(range(10)),
        cpus_per_trial=4,
        gpus_per_trial=1,
        needs_gpu=True,
        needs_data=True,
        runtime_note="~1-2 GPU-hours per trial (~10 h on 8 GPUs); GPU cluster and --data required",
    )


def search() -> StudyPreset:
    """Optuna search over pretext-task parameters and learning rates, scored on validation AUC.

    Launch: `study search --preset search --samples 20` (add `--data DIR` for real images).
    Expected runtime: about 30 s per sample on 2 CPU cores (small encoder, 32 px synthetic lesions).
    Selects on the fine-tune phase's validation AUC at the epoch the first patience regime keeps; test
    metrics are recorded but never optimised. Confirm the chosen configuration afterwards with a seeded
    `study run` (a searched optimum is a biased estimate of its own performance).
    """
    base = demo().base.replace(patiences=(3,))
    return StudyPreset(
        name="search",
        base=base,
        arms=(),
        seeds=(0,),
        cpus_per_trial=1,
        search=SearchSettings(),
        runtime_note="~30 s per sample on 2 CPU cores",
    )


PRESETS: dict[str, Callable[[], StudyPreset]] = {
    "demo": demo,
    "smoke": smoke,
    "six-arms": six_arms,
    "cpu-real": cpu_real,
    "paper": paper,
    "search": search,
}


def get_preset(name: str) -> StudyPreset:
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (see `study presets`)"
        )
    return PRESETS[name]()


def describe_presets() -> str:
    """Each preset's name and docstring, for `study presets`."""
    parts = []
    for name, fn in PRESETS.items():
        parts.append(f"{name}\n" + "\n".join("    " + line for line in inspect.getdoc(fn).splitlines()))
    return "\n\n".join(parts)
