"""Training-time schedules as callbacks, so every architecture reuses the same trainer."""

import math
from collections.abc import Sequence

from transformers import TrainerCallback

SCHEDULES = ("constant", "linear", "cosine", "step")


def schedule_value(kind: str, progress: float, start: float, end: float = 0.0,
                   steps: Sequence[tuple[float, float]] = ()) -> float:
    """Value at `progress` (clamped to [0, 1]): "constant" (start), "linear" and "cosine" (start -> end, the
    cosine flat at both ends) or "step" (piecewise constant: `steps` = [(from_progress, value), ...], start
    before the first)."""
    progress = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return start
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":
        value = start
        for at, step_value in sorted(steps):
            if progress >= at:
                value = step_value
        return value
    raise ValueError(f"unknown schedule {kind!r}; use one of {SCHEDULES}")


class ScheduleCallback(TrainerCallback):
    """Base: computes a scheduled value at the start of training and of every optimizer step and hands it to
    `apply`. Progress is `global_step / total_steps` (`total_steps` defaults to the run's `max_steps`)."""

    def __init__(self, kind: str = "linear", start: float = 0.0, end: float = 1.0,
                 steps: Sequence[tuple[float, float]] = (), total_steps: int | None = None, as_int: bool = False):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; use one of {SCHEDULES}")
        self.kind, self.start, self.end, self.steps = kind, start, end, list(steps)
        self.total_steps, self.as_int = total_steps, as_int
        self.value = round(start) if as_int else start

    def value_at(self, global_step: int, max_steps: int) -> float:
        total = max_steps if self.total_steps is None else self.total_steps
        progress = global_step / total if total > 0 else 1.0
        value = schedule_value(self.kind, progress, self.start, self.end, self.steps)
        return round(value) if self.as_int else value

    def apply(self, value, model) -> None:
        raise NotImplementedError

    def _update(self, state, model) -> None:
        self.value = self.value_at(state.global_step, state.max_steps)
        self.apply(self.value, model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)


def _set_path(obj, path: str, value) -> None:
    *parents, last = path.split(".")
    for name in parents:
        obj = obj[int(name)] if name.isdigit() else getattr(obj, name)
    if not hasattr(obj, last):
        raise AttributeError(f"{type(obj).__name__} has no attribute {last!r} (schedule path {path!r})")
    setattr(obj, last, value)


class AttributeScheduleCallback(ScheduleCallback):
    """Set `model.<attribute path>` (dotted, list indices allowed: "model.layers.0.merge_ratio") from a constant /
    linear / cosine / step schedule, e.g. a token-merge ratio (`as_int=True` rounds to an integer)."""

    def __init__(self, attribute: str, kind: str = "linear", start: float = 0.0, end: float = 1.0,
                 steps: Sequence[tuple[float, float]] = (), total_steps: int | None = None, as_int: bool = False):
        super().__init__(kind, start, end, steps, total_steps, as_int)
        self.attribute = attribute

    def apply(self, value, model) -> None:
        if model is not None:
            _set_path(model, self.attribute, value)


class MomentumScheduleCallback(AttributeScheduleCallback):
    """EMA momentum of a momentum encoder raised from `start` to `end` along a cosine (BYOL, ALBEF)."""

    def __init__(self, attribute: str = "momentum", start: float = 0.995, end: float = 1.0,
                 total_steps: int | None = None):
        super().__init__(attribute, "cosine", start, end, total_steps=total_steps)


class LossWeightWarmupCallback(ScheduleCallback):
    """Ramp the trainer's weight of one loss component linearly from `start` (0) to `weight` over `warmup_steps`
    optimizer steps, then hold it. `VLTrainer` binds itself to this callback when given it."""

    def __init__(self, component: str, weight: float, warmup_steps: int, start: float = 0.0, trainer=None):
        super().__init__("linear", start, weight, total_steps=warmup_steps)
        self.component, self.trainer = component, trainer

    def bind_trainer(self, trainer) -> None:
        self.trainer = trainer

    def apply(self, value, model) -> None:
        if self.trainer is None:
            raise RuntimeError("LossWeightWarmupCallback needs a VLTrainer: pass it in the trainer's `callbacks`.")
        self.trainer.set_loss_weight(self.component, value)


class DatasetEpochCallback(TrainerCallback):
    """Hand the epoch to a training dataset with `set_epoch` (e.g. `CaptionChoice`, which draws one of several
    captions per epoch) at the start of every epoch. accelerate's data loader calls `dataset.set_epoch` only when
    its sampler has none (not under DDP, where the seedable sampler has one), so the trainer does it here."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor((state.epoch or 0) + 1e-9))  # fractional when resumed mid-epoch
