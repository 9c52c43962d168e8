"""CosMo's trainer: pair, interleaved and video batches with their own weights; contrastive term on pairs only."""

from .vl_trainer import VLTrainer


def batch_type(inputs: dict) -> str:
    """"pair" (one image per sample), "video" (frames > 1) or "interleaved" (several media, or none)."""
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return "interleaved"
    media_mask = inputs.get("media_mask")
    counts = media_mask.sum(-1) if media_mask is not None else None
    one_each = bool((counts == 1).all()) if counts is not None else pixel_values.dim() < 6 or pixel_values.shape[1] == 1
    frames = pixel_values.shape[2] if pixel_values.dim() == 6 else 1
    if frames > 1 and (counts is None or bool((counts <= 1).all())):
        return "video"
    return "pair" if one_each else "interleaved"


class CosmoTrainer(VLTrainer):
    """Trains `CosmoForConditionalGeneration` on pair / interleaved / video batches.

    The batch type comes from a `batch_type` entry of the batch when the collator sets one, else from the media
    layout. The contrastive term is computed on pair batches only (CosMo applies it to image-text pairs).
    """

    def model_inputs(self, inputs: dict):
        kind = inputs.pop("batch_type", None) or batch_type(inputs)
        if kind != "pair":
            inputs["return_loss"] = False
        weight = {"pair": self.args.pair_weight, "interleaved": self.args.interleaved_weight,
                  "video": self.args.video_weight}[kind]
        return inputs, weight

    def component_weight(self, name: str, model) -> float:
        if name == "contrastive_loss" and self.args.contrastive_loss_weight is not None:
            return float(self.args.contrastive_loss_weight)
        return super().component_weight(name, model)
