"""Test-only faults of the trainable, reached through its one hook (`study.trainables.TEST_HOOK`).

tests/conftest.py sets `STUDY_TEST_HOOK=faults` and puts this folder on PYTHONPATH, so the trials of every
test (Ray workers and `study` subprocesses inherit the environment) call `on_event` after each reported
epoch. It does nothing unless a test sets one of:

- `STUDY_INJECT_FAULT="PHASE:EPOCH[:TASK[:always]][,...]"`: fail a trial right after that epoch (`inject_fault`);
- `STUDY_TEST_EPOCH_DELAY="PHASE:SECONDS[,PHASE:SECONDS]"`: sleep after each epoch of that phase (`delay`);
- `STUDY_TEST_PAUSE="PHASE:EPOCH:DIR"`: the first trial to reach that epoch writes DIR/paused.json and sleeps
  (`pause`; fine-tune epochs only).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray import tune


class InjectedFault(RuntimeError):
    """Raised by the fault-injection test hook (`STUDY_INJECT_FAULT`, see `inject_fault`)."""


def on_event(phase: str, *, epoch: int, task: str, node_id: str | None = None) -> None:
    """The trainable's test hook: after epoch `epoch` of `phase` ("pretext" or "finetune") of a `task` trial."""
    inject_fault(phase, epoch, task)
    if phase == "finetune":
        pause(phase, epoch, node_id)
    delay(phase)


def inject_fault(phase: str, epoch: int, task: str) -> None:
    """`STUDY_INJECT_FAULT="PHASE:EPOCH[:TASK[:always]][,...]"` fails a trial right after that epoch.

    `finetune:2` fails every trial once after fine-tune epoch 2 (a marker file in the trial directory makes
    it fire once), so tests can prove a retry resumes from the last checkpoint; `pretext:1:rotation:always`
    fails the rotation trials on every attempt (a retry repeats the unfinished pretext phase), so tests can
    prove a persistently failing trial is recorded as errored while the study completes. Comma-separated
    specs apply together.
    """
    for spec in filter(None, os.environ.get("STUDY_INJECT_FAULT", "").split(",")):
        parts = spec.split(":")
        if parts[:2] != [phase, str(epoch)] or (len(parts) > 2 and parts[2] not in ("*", task)):
            continue
        marker = Path(tune.get_context().get_trial_dir()) / ".fault-injected"
        if marker.exists() and parts[3:] != ["always"]:
            continue
        marker.write_text(spec)
        raise InjectedFault(f"injected fault after {phase} epoch {epoch} (STUDY_INJECT_FAULT={spec})")


def delay(phase: str) -> None:
    """`STUDY_TEST_EPOCH_DELAY="PHASE:SECONDS[,PHASE:SECONDS]"` sleeps after each reported epoch of that phase,
    so that a test interrupting a study at a phase finds it there (the smoke study's epochs take a few
    hundredths of a second)."""
    for item in filter(None, os.environ.get("STUDY_TEST_EPOCH_DELAY", "").split(",")):
        want, seconds = item.split(":")
        if want == phase:
            time.sleep(float(seconds))


def pause(phase: str, epoch: int, node_id: str | None) -> None:
    """`STUDY_TEST_PAUSE="PHASE:EPOCH:DIR"` makes the first trial that completes (and checkpoints) that epoch
    write `DIR/paused.json` (its trial id and node) and sleep, so that a test can remove its node at a known
    moment. Off while DIR does not exist."""
    spec = os.environ.get("STUDY_TEST_PAUSE")
    if not spec:
        return
    want_phase, want_epoch, folder = spec.split(":", 2)
    if (want_phase, want_epoch) != (phase, str(epoch)):
        return
    try:
        fd = os.open(Path(folder) / "paused.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except (FileExistsError, FileNotFoundError):
        return  # another trial paused already, or the test did not create DIR (pausing is off)
    trial_id = tune.get_context().get_trial_id()
    with os.fdopen(fd, "w") as f:
        json.dump({"trial_id": trial_id, "node_id": node_id, "epoch": epoch}, f)
    time.sleep(120)
