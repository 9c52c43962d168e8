"""Arguments of the CosMo trainer."""

from dataclasses import dataclass, field

from .vl_config import VLTrainingArguments


@dataclass
class CosmoTrainingArguments(VLTrainingArguments):
    """`VLTrainingArguments` plus CosMo's per-batch-type loss weights."""

    pair_weight: float = field(default=1.0, metadata={"help": "Loss weight of image/video-caption pair batches."})
    interleaved_weight: float = field(default=1.0, metadata={"help": "Loss weight of interleaved document batches."})
    video_weight: float = field(default=1.0, metadata={"help": "Loss weight of video batches."})
    contrastive_loss_weight: float | None = field(
        default=None, metadata={"help": "Override the model config's contrastive weight (pair batches only)."}
    )
