"""Arguments of the CosMo trainer."""

from dataclasses import dataclass, field

from .vl_config import VLTrainingArguments


@dataclass
class CosmoTrainingArguments(VLTrainingArguments):
    """`VLTrainingArguments` plus CosMo's per-batch-type loss weights."""

    pair_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the whole loss of image-caption pair batches."}
    )
    interleaved_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the whole loss of interleaved document batches."}
    )
    video_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the whole loss of video batches."})
    contrastive_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Override the model config's `contrastive_loss_weight` (and `loss_weights`)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True,
        metadata={
            "help": "The contrastive heads get no gradient on interleaved and video batches, so DDP must look for "
            "unused parameters (set False only when every batch is a pair batch)."
        },
    )
