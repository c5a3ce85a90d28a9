"""The results.csv / history.csv columns declared once (`study.spec.schema`), in the order the runner writes."""

from __future__ import annotations

import random

from study.spec import schema
from study.tasks.registry import param_names

# The smoke study's results.csv columns (8 trials of the paper's four arms), as the runner wrote them.
SMOKE_HEAD = ["trial_id", "arm", "task", *param_names(), "lr", "seed", "label_fraction"]


def test_results_columns_come_in_the_declared_order_whatever_order_they_are_given():
    columns = [*schema.results_head(), "pretext_mse", "pretext_key", "pretext_lr", *schema.PROVENANCE]
    shuffled = random.Random(0).sample(columns, len(columns))
    ordered = schema.results_column_order(shuffled)
    assert ordered[: len(SMOKE_HEAD)] == SMOKE_HEAD
    assert ordered[-len(schema.PROVENANCE) :] == list(schema.PROVENANCE)
    pretext = [c for c in ordered if c.startswith("pretext_")]
    assert pretext == sorted(pretext) and ordered.index("probe_s") < ordered.index(pretext[0])


def test_a_column_the_schema_does_not_name_goes_after_the_head_and_before_the_pretext_columns():
    ordered = schema.results_column_order(["pretext_mse", "test_new_metric", "trial_id", "pid"])
    assert ordered == ["trial_id", "test_new_metric", "pretext_mse", "pid"]


def test_history_keeps_identity_then_losses_then_sorted_metrics():
    given = ["val_loss", "test_auc", "epoch", "phase", "loss", "trial_id", "arm", "seed", "label_fraction",
             "node_id", "pid", "val_auc", "time_total_s"]  # fmt: skip
    assert schema.history_column_order(given) == [
        *schema.HISTORY_IDENTITY, "pid", "node_id", "loss", "val_auc", "val_loss", "test_auc"
    ]  # fmt: skip


def test_the_contract_columns_analysis_parses_are_declared_here():
    assert set(schema.REQUIRED_COLUMNS) <= {*schema.results_head()}
    assert set(schema.COST_COLUMNS) == {f"pretext_{f}" for f in schema.PRETEXT_COST_FIELDS} - {"pretext_device"}
    ints, floats = schema.optional_int_columns(), schema.optional_float_columns()
    assert not set(ints) & set(floats) and set(param_names()) <= {*ints, *floats}
