"""Image-text contrastive objective: projection heads, learnable temperature, symmetric InfoNCE loss."""

import torch
import torch.nn.functional as F
from torch import nn


class ContrastiveProjection(nn.Module):
    """Bias-free linear projection into the joint space followed by L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=-1)


class LogitScale(nn.Module):
    """Learnable log logit scale (inverse temperature), clamped to ``max_value`` when read; a 0-dim tensor."""

    def __init__(self, init_value: float, max_value: float):
        super().__init__()
        # Shape (1,), not (): FSDP2's `fully_shard` rejects 0-dim parameters.
        self.value = nn.Parameter(torch.full((1,), float(init_value)))
        self.max_value = max_value

    def forward(self) -> torch.Tensor:
        return self.value.clamp(max=self.max_value).exp().squeeze(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the (1,) shape hold a 0-dim value: load them unchanged.
        key = prefix + "value"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def contrastive_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor):
    """Returns (logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img)) from normalised embeddings."""
    logits_per_image = logit_scale * image_embeds @ text_embeds.t()
    return logits_per_image, logits_per_image.t()


def symmetric_contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor, offset: int = 0):
    """Mean of image->text and text->image cross-entropy; the positive of local row i is column ``offset + i``
    (``offset`` = this process's first index when the other side was gathered across processes)."""
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device) + offset
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2
