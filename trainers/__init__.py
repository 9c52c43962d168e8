"""Trainer subclasses, their arguments, distributed losses and callbacks."""

from .callbacks import (
    AttributeScheduleCallback,
    DatasetEpochCallback,
    LossWeightWarmupCallback,
    MomentumScheduleCallback,
    ScheduleCallback,
    schedule_value,
)
from .checkpoints import SafetensorsCheckpointMixin, last_complete_checkpoint, resolve_resume
from .cosmo_config import CosmoTrainingArguments
from .cosmo_trainer import CosmoTrainer
from .losses import distributed_contrastive_loss, gather_with_grad
from .vl_config import VLTrainingArguments
from .vl_trainer import LOSS_KINDS, LossMeter, VLTrainer, batch_type, register_loss_component

__all__ = [
    "LOSS_KINDS",
    "AttributeScheduleCallback",
    "CosmoTrainer",
    "CosmoTrainingArguments",
    "DatasetEpochCallback",
    "LossMeter",
    "LossWeightWarmupCallback",
    "MomentumScheduleCallback",
    "SafetensorsCheckpointMixin",
    "ScheduleCallback",
    "VLTrainer",
    "VLTrainingArguments",
    "batch_type",
    "distributed_contrastive_loss",
    "gather_with_grad",
    "last_complete_checkpoint",
    "register_loss_component",
    "resolve_resume",
    "schedule_value",
]
