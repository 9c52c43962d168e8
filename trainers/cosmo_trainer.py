"""CosMo's trainer: pair, interleaved and video batches with their own weights; contrastive term on pairs only."""

from types import SimpleNamespace

import torch

from cosmo_vl.modeling.cross_attention import GatedCrossAttentionBlock
from cosmo_vl.modeling.lm_split import MultimodalDecoderLayer
from cosmo_vl.modeling.modeling_cosmo import CosmoVisualCache

from .losses import gather_with_grad
from .objectives import gather_no_grad, gather_token_rows
from .vl_trainer import VLTrainer, batch_type
from .vlp_options import last_token_states


class CosmoTrainer(VLTrainer):
    """Trains `CosmoForConditionalGeneration` on pair / interleaved / video batches.

    The batch type is the batch's `batch_type` entry when the collator sets one (popped before the forward),
    else inferred from the media layout (see `batch_type`). The contrastive term is added on pair batches only
    (`contrastive_on="pairs"`, as CosMo does); each type's loss is scaled by its `<type>_loss_weight`, and its
    components are also logged as `<type>_<component>` (e.g. `pair_contrastive_loss`, `interleaved_lm_loss`).

    The shared VLP objectives of `VLTrainingArguments` work on CosMo's pair batches:
    - ITM (`itm_loss_weight`): the fused representation of an (image, caption) pair is the LM's last hidden state
      at the caption's last token, after the gated cross-attention layers; the matched pairs reuse the training
      forward, the 2B hard-negative pairs run the LM once more on the already resampled latents.
    - Momentum distillation: the momentum encoder is an EMA of the trainable parameters that produce the
      contrastive embeddings (vision tower, resampler, LM layers below the split, text pooler, projections);
      frozen parameters are shared, cross-attention and the layers above the split are not tracked.
    """

    logged_batch_types = ("pair", "interleaved", "video")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "contrastive_loss_weight", None) is not None:
            self.set_loss_weight("contrastive_loss", self.args.contrastive_loss_weight)

    def batch_weight(self, kind: str) -> float:
        return float(getattr(self.args, f"{kind}_loss_weight", 1.0))

    # ------------------------------------------------------------------------------------ VLP objective hooks
    def itm_hidden_size(self, model) -> int:
        return model.config.text_config.hidden_size

    def itm_positive_fused(self, model, inputs: dict, outputs) -> torch.Tensor:
        if outputs.hidden_states is None:
            return super().itm_positive_fused(model, inputs, outputs)
        return last_token_states(outputs.hidden_states[-1], inputs.get("attention_mask"))

    def itm_fused(self, model, inputs: dict, outputs, image_index: torch.Tensor, text_index: torch.Tensor):
        visual = outputs.visual_cache  # latents of the batch, still in the autograd graph
        cache = CosmoVisualCache(visual.latents[image_index], visual.contrastive_latents[image_index],
                                 visual.media_mask[image_index])
        mask = inputs.get("attention_mask")
        mask = None if mask is None else mask[text_index]
        out = model.model(input_ids=inputs["input_ids"][text_index], attention_mask=mask, visual_cache=cache,
                          use_cache=False, return_loss=False)
        return last_token_states(out.last_hidden_state, mask)  # (N, H)

    def itm_gather(self, model, inputs: dict, outputs) -> tuple[dict, SimpleNamespace]:
        visual = outputs.visual_cache
        cache = CosmoVisualCache(gather_with_grad(visual.latents), gather_with_grad(visual.contrastive_latents),
                                 gather_no_grad(visual.media_mask))
        ids, mask = gather_token_rows(inputs["input_ids"], inputs.get("attention_mask"))
        return {"input_ids": ids, "attention_mask": mask}, SimpleNamespace(visual_cache=cache)

    def momentum_parameter_names(self, model) -> list[str]:
        depth = model.config.unimodal_depth
        skipped = [name + "." for name, module in model.named_modules()
                   if isinstance(module, GatedCrossAttentionBlock)
                   or (isinstance(module, MultimodalDecoderLayer) and module.layer_idx >= depth)]
        return [
            name for name, param in model.named_parameters()
            if param.requires_grad and not name.startswith(tuple(skipped))
            and not name.startswith(("lm_head.", "model.logit_scale."))
        ]


__all__ = ["CosmoTrainer", "batch_type"]
