"""The columns of results.csv and history.csv, declared once: the contract between running and analysing.

The runner orders its tables with `results_column_order` / `history_column_order`; the analysis parses them
with `REQUIRED_COLUMNS`, `OPTIONAL_STR_COLUMNS`, `optional_int_columns`, `optional_float_columns` and
`OPTIONAL_BOOL_COLUMNS`; docs/ARCHITECTURE.md lists them in this order. Columns that depend on the registered
tasks (one per task parameter, `pretext_<metric>` per task metric) come from `study.tasks.registry`.

results.csv: one row per trial x early-stopping regime, in three groups:
    head        identity, design and outcome (`results_head`): trial_id, arm, task, one column per task
                parameter, lr, seed, label_fraction, regime, patience, status, error, the regime's outcome
                (stop_epoch ... test_loss), divergence, linear probe
    pretext_*   the pretext phase's settings, metrics, references and cost, sorted by name
    tail        `PROVENANCE`: search score, epochs run, cost, encoder settings, where the trial ran
history.csv: one row per epoch of each trial: `HISTORY_IDENTITY`, pid, node_id, loss, then val_* and test_*
sorted by name.
"""

from __future__ import annotations

from collections.abc import Iterable

from study.tasks import registry

#: The classification metrics of a regime's kept epoch (`study.train.metrics.classification_metrics`, with
#: its `loss` as `test_loss`), in column order.
CLASSIFICATION_METRICS = (
    "test_soft_accuracy",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_auc",
    "test_sensitivity",
    "test_specificity",
    "test_f1",
)
#: Which way a metric is better, declared here for every column that is not a task's `pretext_<metric>` (those
#: are the task registry's, `registry.metric_direction`): HIGHER (larger is better), LOWER (smaller is better)
#: or NO_DIRECTION (epochs, costs, settings: an arm is then higher or lower, never better or worse). A column
#: not listed has no direction; a `val_<m>` column has the direction of `test_<m>`.
HIGHER, LOWER, NO_DIRECTION = 1, -1, 0
METRIC_DIRECTIONS = {
    **dict.fromkeys(CLASSIFICATION_METRICS, HIGHER),
    "test_loss": LOWER,
    "val_loss": LOWER,
    "probe_auc": HIGHER,
    "probe_val_auc": HIGHER,
    "stop_epoch": NO_DIRECTION,
    "best_epoch": NO_DIRECTION,
    "epoch_used": NO_DIRECTION,
}

#: The early-stopping regime and what its replay kept (`study.train.phases.replay_regimes`).
REGIME_COLUMNS = (
    "regime",
    "patience",
    "status",  # ok | diverged | error (`stopped`: a search trial ASHA stopped)
    "error",
    "stop_epoch",
    "best_epoch",
    "epoch_used",
    "val_loss",
    *CLASSIFICATION_METRICS,
    "test_loss",
)
#: Per trial: where it diverged, and the linear probe of the encoder the fine-tune started from.
TRIAL_COLUMNS = ("diverged_epoch", "diverged_phase", "probe_auc", "probe_val_auc", "probe_c", "probe_s")
#: Columns of the pretext phase (its settings, metrics, references, cost, cache use) start with this.
PRETEXT_PREFIX = "pretext_"
#: The pretext phase's recorded cost (`study.train.phases.PretextResult.cost`), as `pretext_<field>` columns.
PRETEXT_COST_FIELDS = ("seconds", "device", "devices", "images_seen", "flops")
#: The numeric cost columns, per pretext phase.
COST_COLUMNS = ("pretext_seconds", "pretext_devices", "pretext_images_seen", "pretext_flops")
#: Last: the search score, the epochs run, the trial's cost, its encoder settings and where it ran.
PROVENANCE = (
    "search_score",
    "finetune_epochs_run",
    "finetune_epochs_resumed",  # fine-tune epochs not redone because the trial resumed from a checkpoint
    "trial_seconds",  # Tune's wall seconds in the trainable, all attempts
    "encoder",
    "image_size",
    "threads",
    "mixed_precision",
    "data_fingerprint",
    "pid",
    "node_id",
    "restored",  # the trial restarted (retry or resume) from one of its checkpoints
)

#: What the analysis reads; a table without these cannot be analysed.
REQUIRED_COLUMNS = (
    "trial_id",
    "arm",
    "task",
    "seed",
    "regime",
    "patience",
    "stop_epoch",
    "status",
    *CLASSIFICATION_METRICS,
    "test_loss",
)
#: The rest of the contract: added as missing values when absent, so downstream code can rely on them.
OPTIONAL_STR_COLUMNS = ("error", "encoder", "data_fingerprint", "pretext_device")
OPTIONAL_BOOL_COLUMNS = ("pretext_cached",)

HISTORY_IDENTITY = ("trial_id", "arm", "seed", "label_fraction", "phase", "epoch")
HISTORY_REQUIRED_COLUMNS = ("trial_id", "arm", "seed", "phase", "epoch")


def results_head() -> tuple[str, ...]:
    """The head columns of results.csv in order: identity, one per registered task parameter (empty where a
    trial's task does not use it), design, regime outcome, divergence and probe."""
    return ("trial_id", "arm", "task", *registry.param_names(), "lr", "seed", "label_fraction",
            *REGIME_COLUMNS, *TRIAL_COLUMNS)  # fmt: skip


def results_column_order(columns: Iterable[str]) -> list[str]:
    """`columns` (those a results table has) in results.csv's order: the head columns in `results_head`
    order, any other non-pretext column in the given order, `pretext_*` sorted by name, then `PROVENANCE`."""
    columns = list(columns)
    present = set(columns)
    head = [c for c in results_head() if c in present]
    pretext = sorted(c for c in columns if c.startswith(PRETEXT_PREFIX))
    tail = [c for c in PROVENANCE if c in present]
    placed = {*head, *pretext, *tail}
    return head + [c for c in columns if c not in placed] + pretext + tail


def history_column_order(columns: Iterable[str]) -> list[str]:
    """The columns history.csv keeps, in order: `HISTORY_IDENTITY`, pid, node_id, loss, then val_* and
    test_* sorted by name (other columns of the reported results are dropped)."""
    columns = list(columns)
    keep = [*HISTORY_IDENTITY, *(c for c in ("pid", "node_id", "loss") if c in columns)]
    return keep + sorted(c for c in columns if c.startswith("val_")) + sorted(
        c for c in columns if c.startswith("test_")
    )


def task_params_of(kind: type) -> tuple[str, ...]:
    """The registered task parameters of type `kind` (int or float), in registration order."""
    return tuple(n for n in registry.param_names() if registry.param_spec(n).type is kind)


def optional_int_columns() -> tuple[str, ...]:
    """Whole-number contract columns (added as missing when absent): epochs, the int task parameters of the
    registered tasks, the image size."""
    return ("best_epoch", "diverged_epoch", *task_params_of(int), "image_size")


def optional_float_columns() -> tuple[str, ...]:
    """Float contract columns (added as missing when absent): learning rates, validation loss, the float task
    parameters, the pretext metrics (`pretext_<metric>`) of the registered tasks and the pretext cost."""
    metrics = dict.fromkeys(f"pretext_{m}" for task in registry.TASKS.values() for m in task.metrics)
    return ("lr", "pretext_lr", "val_loss", *task_params_of(float), *metrics, *COST_COLUMNS)


def metric_direction(column: str) -> int:
    """HIGHER (1), LOWER (-1) or NO_DIRECTION (0) for a results or history column, from the one table that
    declares it: `METRIC_DIRECTIONS`, or the task registry for `pretext_<metric>` columns."""
    if column.startswith(PRETEXT_PREFIX):
        return registry.metric_direction(column.removeprefix(PRETEXT_PREFIX))
    if column.startswith("val_") and column not in METRIC_DIRECTIONS:
        column = "test_" + column.removeprefix("val_")
    return METRIC_DIRECTIONS.get(column, NO_DIRECTION)


def higher_is_better(column: str) -> bool:
    """True only for a column whose larger values are better (`metric_direction` HIGHER)."""
    return metric_direction(column) == HIGHER


def orientation(column: str) -> float:
    """-1.0 for a lower-is-better column, else 1.0: times a difference (arm - baseline), positive = the arm
    better (for a column without a direction: the arm higher)."""
    return -1.0 if metric_direction(column) == LOWER else 1.0
