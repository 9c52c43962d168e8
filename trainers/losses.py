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
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph: the backward of the
    collective sums every rank's gradient for this rank's slice (unlike `accelerator.gather`, which detaches).
    Identity on a single process."""
    _, size = world()
    if size == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def local_batch_sizes(batch_size: int, device: torch.device) -> list[int]:
    """The local batch size of every process (one tiny collective); `[batch_size]` on a single process."""
    _, size = world()
    if size == 1:
        return [batch_size]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([batch_size], device=device))
    return [int(s) for s in sizes]


def distributed_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE of the local rows against the columns of every process (in-batch negatives from the
    global batch); the positive of local row i is global column `rank * b + i`.

    image_embeds / text_embeds: (b, D) L2-normalised, the same b on every process; logit_scale: exp'ed scalar.
    Averaged over processes (as DDP averages gradients), loss and gradients equal the single-process loss on the
    global batch. Returns (loss, logits_per_image (b, world * b)).
    """
    rank, size = world()
    b = image_embeds.shape[0]
    if text_embeds.shape[0] != b:
        raise ValueError(f"{b} image embeddings but {text_embeds.shape[0]} text embeddings on rank {rank}.")
    sizes = local_batch_sizes(b, image_embeds.device)
    if len(set(sizes)) > 1:
        raise ValueError(
            f"distributed_contrastive_loss needs the same local batch size on every process, got {sizes}; "
            "drop the last incomplete batch (dataloader_drop_last=True)."
        )
    all_images, all_texts = gather_with_grad(image_embeds), gather_with_grad(text_embeds)  # (world * b, D)
    logits_per_image, _ = contrastive_logits(image_embeds, all_texts, logit_scale)  # (b, world * b)
    logits_per_text, _ = contrastive_logits(text_embeds, all_images, logit_scale)  # (b, world * b)
    return symmetric_contrastive_loss(logits_per_image, logits_per_text, offset=rank * b), logits_per_image
