"""Training steps a pretext task can declare instead of a batch transform (`PretextTask.step`).

A declaration says what a method is, never how it runs: the study's training package (`study.train`) holds
one implementation per kind of declaration, found by the declaration's type (`TwoViewStep` ->
`study.train.contrastive`), and it names no task. A task defining module (`study.tasks.contrastive`) declares
its method's facts here and turns its resolved parameters into the phase's settings (`TwoViewStep.settings`),
so every parameter, default and range of a method lives in its task registration alone.

Two-view methods (SimCLR, Chen et al. 2020; BYOL, Grill et al. 2020): two augmented views per image
(`study.tasks.views`), an encoder, global average pooling and a projection MLP, and one of the losses of
`TWO_VIEW_LOSSES` (the task's `loss`):

- `nt_xent`: each of the 2B views of a batch must find its partner among the 2B - 1 others (NT-Xent with
  `TwoViewSettings.temperature`); no predictor, no target network: both views go through the one network
  in one pass.
- `normalized_mse`: the online network's prediction of one view must match the target network's
  projection of the other, `2 - 2 cos`, symmetrised; a predictor MLP and a target network that follows the
  online one by an exponential moving average (`TwoViewSettings.ema_base`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Loss -> (predictor, ema_target): the two-view methods the study implements (module docstring).
TWO_VIEW_METHODS: dict[str, tuple[bool, bool]] = {"nt_xent": (False, False), "normalized_mse": (True, True)}
TWO_VIEW_LOSSES = tuple(TWO_VIEW_METHODS)


@dataclass(frozen=True)
class TwoViewSettings:
    """One trial's settings of a two-view phase, made from its task's resolved parameters.

    `projection_width`, `projection_dim`: the projection MLP's hidden width and output size (and the
    predictor's); `view_params`: validated `study.tasks.views` parameters; `temperature`: the NT-Xent
    temperature (`nt_xent` only); `ema_base`: the target's initial EMA momentum (an EMA target only).
    """

    projection_width: int
    projection_dim: int
    view_params: Mapping[str, Any]
    temperature: float | None = None
    ema_base: float | None = None


@dataclass(frozen=True)
class TwoViewStep:
    """A two-view training step (module docstring), declared by what the method is.

    `predictor`: the online network ends in a predictor MLP. `ema_target`: the partner views' projections come
    from a target network following the online one by EMA. `projector_bn`: the projection MLP ends in
    BatchNorm without centre (SimCLR's head). `settings(image_size, params) -> TwoViewSettings`: the phase's
    settings from the task's resolved parameters at `image_size` px.
    """

    predictor: bool
    ema_target: bool
    projector_bn: bool
    settings: Callable[[int, Mapping[str, Any]], TwoViewSettings]

    def check(self, task: str, loss: str) -> None:
        """`ValueError` unless (`loss`, predictor, EMA target) is a method the study implements."""
        if not callable(self.settings):
            raise ValueError(f"task {task!r}: TwoViewStep.settings must be a callable (image_size, params)")
        if TWO_VIEW_METHODS.get(loss) != (self.predictor, self.ema_target):
            raise ValueError(
                f"task {task!r}: loss {loss!r} with predictor={self.predictor}, ema_target={self.ema_target} "
                f"is not implemented; choose one of {TWO_VIEW_METHODS} (loss: (predictor, ema_target))"
            )
