"""Arguments of the vision-language trainer."""

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

CONTRASTIVE_ON = ("pairs", "all", "none")


@dataclass
class VLTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the options every vision-language objective shares."""

    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep every dataset column: images/videos reach the collator, which runs the processor."},
    )
    loss_weights: dict | str | None = field(
        default=None,
        metadata={
            "help": "Weight per loss component, e.g. '{\"lm\": 1.0, \"contrastive\": 0.5}' ('lm' and 'lm_loss' "
            "both name `lm_loss`). Unlisted components use the model's `loss_weights`, then its config's "
            "`<name>_weight` (e.g. `contrastive_loss_weight`), then 1."
        },
    )
    gather_contrastive: bool = field(
        default=True,
        metadata={
            "help": "With several processes, compute the contrastive loss against the embeddings of every process "
            "(gathered with gradients), so negatives come from the global batch. Needs equal local batch sizes."
        },
    )
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluation returns losses only (no vocabulary-sized logits gathered)."}
    )
    contrastive_on: str = field(
        default="pairs",
        metadata={
            "help": "Batches that get the contrastive term: 'pairs' (one image per sample), 'all' (one image or "
            "video per sample) or 'none'.",
            "choices": list(CONTRASTIVE_ON),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.loss_weights, str):
            self.loss_weights = json.loads(self.loss_weights)
        if self.contrastive_on not in CONTRASTIVE_ON:
            raise ValueError(f"contrastive_on must be one of {CONTRASTIVE_ON}, got {self.contrastive_on!r}")
