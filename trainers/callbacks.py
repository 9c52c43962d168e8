"""Training-time schedules as callbacks, so every architecture reuses the same trainer."""

import math
from collections.abc import Sequence

from transformers import TrainerCallback


def schedule_value(kind: str, progress: float, start: float, end: float, steps: Sequence[tuple[float, float]] = ()):
    """Value at `progress` in [0, 1]: "constant" (start), "linear" and "cosine" (start -> end), or "step"
    (piecewise constant from `steps` = [(from_progress, value), ...], before the first: start)."""
    progress = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return start
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":
        value = start
        for at, v in sorted(steps):
            if progress >= at:
                value = v
        return value
    raise ValueError(f"unknown schedule {kind!r}; use constant, linear, cosine or step")


def _set_path(obj, path: str, value) -> None:
    *parents, last = path.split(".")
    for name in parents:
        obj = getattr(obj, name)
    setattr(obj, last, value)


class AttributeScheduleCallback(TrainerCallback):
    """Set `model.<attribute path>` from a schedule over training progress at every step (e.g. a token-merge
    ratio, a momentum, a loss weight); integer values are rounded when `as_int`."""

    def __init__(self, attribute: str, kind: str = "linear", start: float = 0.0, end: float = 1.0,
                 steps: Sequence[tuple[float, float]] = (), as_int: bool = False):
        self.attribute, self.kind, self.start, self.end, self.steps, self.as_int = attribute, kind, start, end, steps, as_int
        self.value = start

    def _apply(self, state, model):
        progress = state.global_step / max(1, state.max_steps)
        value = schedule_value(self.kind, progress, self.start, self.end, self.steps)
        self.value = round(value) if self.as_int else value
        if model is not None:
            _set_path(model, self.attribute, self.value)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)


class MomentumScheduleCallback(AttributeScheduleCallback):
    """EMA momentum raised from `start` to `end` (default 0.995 -> 1.0) along a cosine, as in BYOL/ALBEF."""

    def __init__(self, attribute: str = "momentum", start: float = 0.995, end: float = 1.0):
        super().__init__(attribute, "cosine", start, end)


class LossWeightWarmupCallback(TrainerCallback):
    """Ramp the trainer's weight of one loss component linearly from 0 to `weight` over `warmup_steps`."""

    def __init__(self, trainer, component: str, weight: float, warmup_steps: int):
        self.trainer, self.component, self.weight, self.warmup_steps = trainer, component, weight, warmup_steps

    def on_step_begin(self, args, state, control, **kwargs):
        fraction = min(1.0, state.global_step / max(1, self.warmup_steps))
        self.trainer.loss_weights[self.component] = self.weight * fraction
