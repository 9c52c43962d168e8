"""Losses that need the process group: contrastive loss over embeddings gathered from every process."""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from cosmo_vl.modeling.contrastive import contrastive_logits, symmetric_contrastive_loss


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph (each rank's slice
    receives the gradients of every rank's loss); identity on a single process."""
    rank, size = world()
    if size == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def distributed_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE of the local rows against the columns of all processes (in-batch negatives from the
    global batch). Averaged over processes by DDP, its gradients equal the single-process loss on the global
    batch. Returns (loss, logits_per_image_local)."""
    rank, size = world()
    all_images, all_texts = gather_with_grad(image_embeds), gather_with_grad(text_embeds)
    if size > 1 and all_images.shape[0] != image_embeds.shape[0] * size:
        raise ValueError(
            "distributed_contrastive_loss needs the same local batch size on every process; "
            "use drop_last / dataloader_drop_last=True."
        )
    logits_per_image, _ = contrastive_logits(image_embeds, all_texts, logit_scale)  # (b, B)
    logits_per_text, _ = contrastive_logits(text_embeds, all_images, logit_scale)  # (b, B)
    offset = rank * image_embeds.shape[0]
    return symmetric_contrastive_loss(logits_per_image, logits_per_text, offset=offset), logits_per_image
