"""Ray Tune param spaces of a resolved study, and its Optuna/ASHA search space (plain dicts and callables).

A grid study's param space (`param_space`) is the fixed trial settings plus the grid dimensions `arm` (a dict
holding `task` and only the parameters that task uses), `seed` (one value per paired repetition) and, for a
label-efficiency study, `subset` (a dict holding one `label_fraction`). Early-stopping regimes are not a grid
dimension: they are replayed from one fine-tune run per trial (`TrialConfig.patiences`). Tune orders a grid by
key name, the first varying fastest: so every arm and seed of the first fraction runs before the next
fraction, whose trials then load their pretext from the cache. A search study's param space is the fixed
settings only; `OptunaSpace` suggests the rest per trial. Task facts (parameters, search ranges) come from
the task registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# `study.search_spaces.SearchSettings` is also the name the pickled searchers of earlier search runs use:
# imported here, `study resume` of such a run unpickles it.
from study.spec.presets import SearchSettings, StudyPreset
from study.tasks.registry import get_task

#: The trial settings every search trial's suggestions set (`OptunaSpace`), besides its task's parameters.
SEARCHED_SETTINGS = ("task", "lr", "pretext_lr")


def searched_settings(settings: SearchSettings) -> tuple[str, ...]:
    """The trial settings a search with `settings` suggests: `SEARCHED_SETTINGS`, and `pretext_batch_size`
    when `pretext_batch_sizes` gives choices."""
    return SEARCHED_SETTINGS + (("pretext_batch_size",) if settings.pretext_batch_sizes else ())


def param_space(preset: StudyPreset) -> dict[str, Any]:
    """Tune's param space of the study: the grid (`grid_space`) or a search's fixed settings."""
    return grid_space(preset) if preset.search is None else search_constants(preset)


def grid_space(preset: StudyPreset) -> dict[str, Any]:
    """The Tune param space of a grid study: fixed settings plus `arm`, `seed` (and `subset`) grid dimensions.

    Task parameters come with their arm (flat keys, `{"task": "corruption", "swap_count": 50}`), so a
    rotation trial never sees swap_count; `base.task_params` (empty in every shipped preset) stays in the
    fixed part, under the arm's."""
    from ray import tune  # the driver imports Ray only to run a study

    fixed = preset.base.to_dict()
    for key in ("task", "seed"):
        fixed.pop(key)
    space = {
        **fixed,
        "arm": tune.grid_search(list(preset.arms)),
        "seed": tune.grid_search(list(preset.seeds)),
    }
    if preset.label_fractions is not None:
        space.pop("label_fraction")
        space["subset"] = tune.grid_search([{"label_fraction": f} for f in preset.label_fractions])
    return space


def search_constants(preset: StudyPreset) -> dict[str, Any]:
    """The fixed settings of every trial of a search study (what `OptunaSpace` suggests left out)."""
    fixed = preset.base.to_dict()
    for key in searched_settings(preset.search):
        fixed.pop(key)
    return fixed


@dataclass(frozen=True)
class OptunaSpace:
    """Define-by-run Optuna space: task parameters are suggested only for the task that uses them.

    A picklable callable (not a closure): Tune checkpoints the searcher with it, so `study resume` works.
    """

    settings: SearchSettings
    image_size: int

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        s, size = self.settings, self.image_size
        task = trial.suggest_categorical("task", list(s.tasks))
        trial.suggest_float("lr", *s.lr_range, log=True)
        if task != "none":
            trial.suggest_float("pretext_lr", *s.pretext_lr_range, log=True)
            if s.pretext_batch_sizes:
                trial.suggest_categorical("pretext_batch_size", list(s.pretext_batch_sizes))
            for param in get_task(task).params:
                if param.search is not None:
                    param.search.suggest(trial, param, size, s.param_ranges.get(param.name))
        return None


def optuna_space(settings: SearchSettings, image_size: int) -> OptunaSpace:
    return OptunaSpace(settings, image_size)
