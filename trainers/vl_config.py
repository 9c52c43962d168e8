"""Arguments of the vision-language trainer."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class VLTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the options every vision-language objective shares."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns: the collator turns images/videos into pixel values."}
    )
    loss_weights: dict | str | None = field(
        default=None,
        metadata={"help": "Weight per loss component, e.g. '{\"lm_loss\": 1.0, \"contrastive_loss\": 0.5}'. "
                  "Components not listed keep weight 1 (the contrastive term uses the model config's weight)."},
    )
    gather_contrastive: bool = field(
        default=True,
        metadata={"help": "With several processes, compute the contrastive loss against the embeddings of all "
                  "processes, gathered with gradients."},
    )
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation returns losses only."})
