"""Reused worker processes (`TuneConfig(reuse_actors=True)`, the default) leak no state between trials."""

from __future__ import annotations

import pytest

from study.runner import _trainable
from study.search_spaces import get_preset

pytestmark = pytest.mark.slow


def test_a_trial_gives_the_same_result_on_a_fresh_and_on_a_reused_worker(tmp_path, monkeypatch):
    """Seeds 0, 1, 0 one after another in one worker: the second seed-0 trial runs in a process that already
    trained (Keras session, TensorFlow graphs, RNG state, cached data) and must match the first bit for bit."""
    ray = pytest.importorskip("ray")
    from ray import tune

    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    smoke = get_preset("smoke")
    # Rotation with its own pretext phase each time (no cache), so both phases run in the reused process.
    base = smoke.base.replace(task="rotation", share_pretext=False, pretext_epochs=2)
    space = {**base.to_dict(), "seed": tune.grid_search([0, 1, 0])}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(
            _trainable(smoke),
            param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), name="reuse", verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert not grid.errors
    done = sorted((r.metrics for r in grid), key=lambda m: m["trial_id"])
    first, other, again = done
    assert first["pid"] == other["pid"] == again["pid"], "the worker was not reused"
    assert first["regimes"] == again["regimes"]
    assert {k: v for k, v in first.items() if k.startswith("pretext_") and k != "pretext_key"} == {
        k: v for k, v in again.items() if k.startswith("pretext_") and k != "pretext_key"
    }
    assert first["regimes"] != other["regimes"]  # a different seed does differ
