"""The trainable's one test hook (`study.trainables.TEST_HOOK`): a named module's `on_event`, nothing else."""

from __future__ import annotations

import sys

import faults
import pytest

from study import trainables


def test_the_hook_calls_the_named_module_after_each_epoch(tmp_path, monkeypatch):
    (tmp_path / "recorder.py").write_text(
        "events = []\n\ndef on_event(phase, **info):\n    events.append((phase, info))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(trainables.TEST_HOOK, "recorder")
    trainables._test_event("finetune", epoch=2, task="rotation", node_id="n")
    assert sys.modules["recorder"].events == [("finetune", {"epoch": 2, "task": "rotation", "node_id": "n"})]


def test_without_the_hook_nothing_is_imported(monkeypatch):
    monkeypatch.delenv(trainables.TEST_HOOK, raising=False)
    monkeypatch.setattr(faults, "on_event", lambda *a, **kw: pytest.fail("hook called"))
    trainables._test_event("pretext", epoch=1, task="rotation", node_id=None)


def test_the_tests_faults_are_off_unless_a_test_sets_them(monkeypatch):
    for name in ("STUDY_INJECT_FAULT", "STUDY_TEST_EPOCH_DELAY", "STUDY_TEST_PAUSE"):
        monkeypatch.delenv(name, raising=False)
    faults.on_event("finetune", epoch=2, task="rotation", node_id="n")  # no trial context needed: no-op


def test_an_injected_fault_names_its_spec(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDY_INJECT_FAULT", "pretext:1:rotation")

    class Context:
        def get_trial_dir(self):
            return str(tmp_path)

    monkeypatch.setattr(faults.tune, "get_context", lambda: Context())
    faults.inject_fault("pretext", 1, "corruption")  # another task: no fault
    with pytest.raises(faults.InjectedFault, match="STUDY_INJECT_FAULT=pretext:1:rotation"):
        faults.inject_fault("pretext", 1, "rotation")
    faults.inject_fault("pretext", 1, "rotation")  # once per trial (marker file), unless `always`
