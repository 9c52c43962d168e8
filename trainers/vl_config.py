"""Arguments of the vision-language trainer."""

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

CONTRASTIVE_ON = ("pairs", "all", "none")
ITM_NEGATIVES = ("sample", "hardest")


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

    # Shared VLP objectives (ALBEF / GRIT-VLP), all off by default; applied to the batches that get the
    # contrastive term, during training only (evaluation logs the plain contrastive and LM terms).
    itm_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of image-text matching with in-batch hard negatives, drawn from the global batch with "
            "several processes and gather_contrastive (0 = off). The trainer owns the "
            "binary ITM head; the model-specific fused representation comes from the trainer (CosmoTrainer: the "
            "last token of the caption after the cross-attention layers)."
        },
    )
    itm_negatives: str = field(
        default="sample",
        metadata={
            "help": "ITM negatives: 'sample' from the similarity softmax (ALBEF/BLIP-2) or 'hardest' (top-1, "
            "GRIT-VLP). Identical captions in a batch are never negatives of each other.",
            "choices": list(ITM_NEGATIVES),
        },
    )
    momentum_distillation: bool = field(
        default=False,
        metadata={
            "help": "ALBEF momentum distillation: the contrastive term becomes InfoNCE against the momentum "
            "encoder's features of the batch + queue, with targets alpha * softmax(momentum sims) + (1 - alpha) * "
            "one-hot. The momentum encoder is an EMA of the trainable parameters of the contrastive path."
        },
    )
    momentum: float = field(default=0.995, metadata={"help": "EMA momentum of the momentum encoder (ALBEF: 0.995)."})
    momentum_queue_size: int = field(
        default=4096,
        metadata={
            "help": "Momentum features kept as extra contrastive columns (ALBEF: 65536; 0 = batch only). Keep it "
            "below the dataset size: a queued copy of a sample's own pair would count as a negative."
        },
    )
    distillation_alpha: float = field(default=0.4, metadata={"help": "Weight of the momentum soft targets (ALBEF: 0.4)."})
    distillation_warmup_steps: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps over which alpha ramps up linearly from 0 (default: one epoch)."},
    )
    grit_sampler: bool = field(
        default=False,
        metadata={
            "help": "GRIT-VLP grouped hard-negative batches: from the second epoch on, each epoch's order chains "
            "the previous epoch's embeddings greedily so consecutive samples are hard negatives (map-style "
            "datasets; needs the contrastive embeddings of every training batch)."
        },
    )
    grit_search_size: int | None = field(
        default=None,
        metadata={"help": "Pairs per greedy search group of the GRIT sampler (default: 100 global batches)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.itm_negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {self.itm_negatives!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distillation_alpha must be in [0, 1], got {self.distillation_alpha}")
        if self.itm_loss_weight < 0 or self.momentum_queue_size < 0:
            raise ValueError("itm_loss_weight and momentum_queue_size must be >= 0.")
        if isinstance(self.loss_weights, str):
            self.loss_weights = json.loads(self.loss_weights)
        if self.contrastive_on not in CONTRASTIVE_ON:
            raise ValueError(f"contrastive_on must be one of {CONTRASTIVE_ON}, got {self.contrastive_on!r}")
