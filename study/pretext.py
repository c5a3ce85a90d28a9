"""The task registry's import path before the packages-by-stage layout (2026-12-07), kept so that task
definitions written against it still run: `from study.pretext import PretextTask, Param, register`. New code
imports `study.tasks.registry` (README, "Add a pretext task"); this module says so once, as a
DeprecationWarning."""

import warnings

from study.tasks.registry import TASKS, Param, PretextTask, Search, get_task, register

__all__ = ["TASKS", "Param", "PretextTask", "Search", "get_task", "register"]

warnings.warn(
    "study.pretext moved to study.tasks.registry; import PretextTask, Param, Search and register from there",
    DeprecationWarning,
    stacklevel=2,
)
