"""What a person sees while a study runs: one progress display and a line per finished or failed trial.

`StudyProgress` is a Ray Tune callback that replaces Tune's own console output (the runner runs Tune with
`verbose=0` unless `--verbose`). On a terminal it keeps one live tqdm bar — trials done of all, how many run
and wait, the phase and epoch of each running trial, elapsed time and an ETA from the finished trials — and
writes each trial's line above it. Elsewhere (CI, `ray job` logs, a pipe) it prints plain lines: the same
per-trial lines and a progress line at most every `plain_interval_s`. Errors are always printed.

Lines look like

    [ 3/36] done    rotation seed 0 (12 s): test AUC none 0.71, patience3 0.70, patience10 0.71
    [ 4/36] FAILED  corruption seed 1: InjectedFault: injected fault after finetune epoch 2
    progress: 4/36 done, 2 running, 30 waiting | rotation s1 pretext 3/4, none s2 finetune 7/16 | 0:48, ETA 6:10
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from ray import tune

PLAIN_INTERVAL_S = 60.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def trial_label(config: dict[str, Any]) -> str:
    """'rotation seed 0' (+ ' 20% labels' below full labels, + arm settings that vary) from a trial config."""
    arm = config.get("arm") or {}
    task = arm.get("task", config.get("task", "?"))
    settings = " ".join(f"{k}={v}" for k, v in sorted(arm.items()) if k != "task")
    text = f"{task}{' ' + settings if settings else ''} seed {config.get('seed', '?')}"
    fraction = (config.get("subset") or {}).get("label_fraction", config.get("label_fraction", 1.0))
    if fraction is not None and float(fraction) < 1.0:
        text += f" {float(fraction):.0%} labels"
    return text


def finished_summary(result: dict[str, Any]) -> str:
    """'test AUC none 0.71, patience3 0.70' from a trial's final result (its `regimes`)."""
    regimes = result.get("regimes") or {}
    parts = []
    for name, reg in regimes.items():
        auc = (reg or {}).get("test_auc")
        parts.append(f"{name} {auc:.2f}" if isinstance(auc, (int, float)) else f"{name} diverged")
    return "test AUC " + ", ".join(parts) if parts else "no regimes reported"


class StudyProgress(tune.Callback):
    """The study's console: see the module docstring. `total`: planned trials (None: from Tune's setup)."""

    def __init__(
        self,
        total: int | None = None,
        *,
        stream: IO[str] | None = None,
        live: bool | None = None,
        plain_interval_s: float = PLAIN_INTERVAL_S,
        max_concurrent: int | None = None,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) if live is None else live
        self.plain_interval_s = plain_interval_s
        self.max_concurrent = max_concurrent
        self._start = time.monotonic()
        self._last_plain = self._start
        self._done = 0
        self._failed = 0
        self._running: dict[str, str] = {}  # trial id -> "phase epoch/epochs"
        self._labels: dict[str, str] = {}
        self._started_at: dict[str, float] = {}
        self._durations: list[float] = []
        self._bar: Any = None
        self._begun = False

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl; a resumed driver makes a new one
        return {"total": self.total, "plain_interval_s": self.plain_interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["total"], plain_interval_s=state["plain_interval_s"])

    # --------------------------------------------------------------------------------------------- output
    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _ensure_bar(self) -> None:
        if self.live and self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, file=self.stream, unit="trial", dynamic_ncols=True, smoothing=0, leave=True
            )
            self._bar.update(self._done + self._failed)

    def eta_seconds(self) -> float | None:
        """Seconds left: the mean finished trial's wall time times the trials left, over the trials that run
        at once (None until a trial has finished or without a total)."""
        if not self._durations or self.total is None:
            return None
        left = self.total - self._done - self._failed
        if left <= 0:
            return None
        parallel = max(1, self.max_concurrent or len(self._running) or 1)
        mean = sum(self._durations) / len(self._durations)
        running_left = sum(max(0.0, mean - (time.monotonic() - t)) for t in self._started_at.values())
        waiting = max(0, left - len(self._running))
        return (running_left + waiting * mean) / parallel

    def status(self) -> str:
        finished = self._done + self._failed
        waiting = max(0, (self.total or finished) - finished - len(self._running))
        head = f"{finished}/{self.total if self.total is not None else '?'} done"
        if self._failed:
            head += f" ({self._failed} failed)"
        head += f", {len(self._running)} running, {waiting} waiting"
        phases = ", ".join(f"{self._labels.get(t, t)} {p}" for t, p in self._running.items() if p)
        eta = self.eta_seconds()
        clock = _clock(time.monotonic() - self._start) + (f", ETA {_clock(eta)}" if eta is not None else "")
        return " | ".join(x for x in (head, phases, clock) if x)

    def _refresh(self, force: bool = False) -> None:
        if self.live:
            self._ensure_bar()
            self._bar.set_postfix_str(self.status().split(" | ", 1)[-1], refresh=True)
        elif force or time.monotonic() - self._last_plain >= self.plain_interval_s:
            self._last_plain = time.monotonic()
            self._write(f"progress: {self.status()}")

    def _counter(self) -> str:
        width = len(str(self.total)) if self.total is not None else 1
        total = self.total if self.total is not None else "?"
        return f"[{self._done + self._failed:>{width}}/{total}]"

    def _begin(self, trials: list, show: bool = True) -> None:
        """Once, at the first hook that sees Tune's trials: count the trials a resumed study finished before
        (Tune calls no hook for them), then show the first progress."""
        if self._begun:
            return
        self._begun = True
        for t in trials:
            status = getattr(t, "status", None)
            if status == "TERMINATED" and (getattr(t, "last_result", None) or {}).get("phase") == "done":
                self._done += 1
            elif status == "ERROR":
                self._failed += 1
        if self._done or self._failed:
            failed = f" ({self._failed} failed)" if self._failed else ""
            self._write(
                f"resumed: {self._done + self._failed}{failed} of {self.total or '?'} trials had finished"
            )
            if self._bar is not None:
                self._bar.update(self._done + self._failed)
        if show:
            self._refresh(force=not self.live)

    # ------------------------------------------------------------------------------------------ Tune hooks
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info: Any) -> None:
        if self.total is None and total_num_samples:
            self.total = int(total_num_samples)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._begin(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._begin(trials)
        self._labels[trial.trial_id] = trial_label(trial.config or {})
        self._running[trial.trial_id] = "starting"
        self._started_at[trial.trial_id] = time.monotonic()
        self._refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        phase, epoch = result.get("phase"), result.get("epoch")
        config = trial.config or {}
        if phase in ("pretext", "finetune") and epoch is not None:
            epochs = config.get(f"{phase}_epochs")
            self._running[trial.trial_id] = f"{phase} {epoch}/{epochs}" if epochs else f"{phase} {epoch}"
        self._refresh()

    def _end(self, trial: Any) -> float:
        self._running.pop(trial.trial_id, None)
        started = self._started_at.pop(trial.trial_id, None)
        return time.monotonic() - started if started is not None else float("nan")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        seconds = self._end(trial)
        result = trial.last_result or {}
        if result.get("phase") != "done":
            return  # stopped early (Ctrl-C, ASHA): not a finished trial
        self._done += 1
        if seconds == seconds:
            self._durations.append(seconds)
        label = self._labels.get(trial.trial_id) or trial_label(trial.config or {})
        self._write(f"{self._counter()} done    {label} ({seconds:.0f} s): {finished_summary(result)}")
        if self._bar is not None:
            self._bar.update(1)
        self._refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial)
        self._failed += 1
        label = self._labels.get(trial.trial_id) or trial_label(trial.config or {})
        self._write(f"{self._counter()} FAILED  {label}: {_error_line(trial)}")
        if self._bar is not None:
            self._bar.update(1)
        self._refresh()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial)
        label = self._labels.get(trial.trial_id) or trial_label(trial.config or {})
        self._write(f"{self._counter()} retry   {label} from its last checkpoint: {_error_line(trial)}")
        self._refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._begin(trials, show=False)  # a resumed study with nothing left to run has no step
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._write(f"progress: {self.status()}")


def _error_line(trial: Any) -> str:
    """The last line of a failed trial's error file (what Tune recorded), or a generic text."""
    path = getattr(trial, "error_file", None)
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1][:300] if lines else "trial failed"
    except (OSError, TypeError):
        return "trial failed (see the trial's error.txt)"
