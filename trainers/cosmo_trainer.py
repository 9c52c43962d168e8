"""CosMo's trainer: pair, interleaved and video batches with their own weights; contrastive term on pairs only."""

from .vl_trainer import VLTrainer, batch_type


class CosmoTrainer(VLTrainer):
    """Trains `CosmoForConditionalGeneration` on pair / interleaved / video batches.

    The batch type is the batch's `batch_type` entry when the collator sets one (popped before the forward),
    else inferred from the media layout (see `batch_type`). The contrastive term is added on pair batches only
    (`contrastive_on="pairs"`, as CosMo does); each type's loss is scaled by its `<type>_loss_weight`, and its
    components are also logged as `<type>_<component>` (e.g. `pair_contrastive_loss`, `interleaved_lm_loss`).
    """

    logged_batch_types = ("pair", "interleaved", "video")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "contrastive_loss_weight", None) is not None:
            self.set_loss_weight("contrastive_loss", self.args.contrastive_loss_weight)

    def batch_weight(self, kind: str) -> float:
        return float(getattr(self.args, f"{kind}_loss_weight", 1.0))


__all__ = ["CosmoTrainer", "batch_type"]
