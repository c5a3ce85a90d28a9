"""The two training phases of a trial, as the trainable and tools call them: `run_pretext`, `run_finetune`,
their results, and the process set-up they need first (`configure`: the backend's threads and determinism;
`configure_tensorflow` is its earlier name).

The phases live in `study.train.pretext_phase` and `study.train.finetune_phase`; this module is the package's
public entry point, so callers need not know how the package is cut.
"""

from study.train.backend import configure, configure_tensorflow
from study.train.finetune_phase import run_finetune
from study.train.pretext_phase import run_pretext
from study.train.results import FinetuneResult, PretextResult

__all__ = [
    "FinetuneResult",
    "PretextResult",
    "configure",
    "configure_tensorflow",
    "run_finetune",
    "run_pretext",
]
