"""2D sin-cos position tables (MAE's fixed patch positions) used to initialise learned position embeddings of
towers trained from scratch: with them, where a patch lies is readable from the first step; random tables must first
learn it, and tiny models trained briefly never separate top from bottom (measured: README, default run)."""

import math

import torch
from torch import nn
from transformers import initialization as init


def sincos_2d_table(grid_h: int, grid_w: int, dim: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """(num_prefix_tokens + grid_h * grid_w, dim): rows of zeros for prefix tokens (CLS), then patches in raster order,
    each half of `dim` a sin/cos code of one axis (x first) at `dim // 4` geometric frequencies."""
    if dim % 4:
        raise ValueError(f"A 2D sin-cos table needs a width divisible by 4; got {dim}.")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                            indexing="ij")
    codes = []
    for coord in (xs.flatten(), ys.flatten()):
        angles = coord[:, None] * omega[None]  # (H*W, dim/4)
        codes += [angles.sin(), angles.cos()]
    table = torch.cat(codes, dim=1)  # (H*W, dim)
    return torch.cat([table.new_zeros(num_prefix_tokens, dim), table]).float()


def square_grid(num_tokens: int) -> tuple[int, int]:
    """(grid side, prefix tokens) of a token count laid out as an optional CLS plus a square grid of patches."""
    for prefix in (0, 1):
        side = math.isqrt(num_tokens - prefix)
        if side * side == num_tokens - prefix and side > 0:
            return side, prefix
    raise ValueError(f"{num_tokens} tokens are neither a square grid nor one prefix token plus a square grid.")


def init_sincos_positions(weight: torch.Tensor) -> None:
    """Fill a (tokens, dim) or (1, tokens, dim) learned position table with the 2D sin-cos table of its layout
    (skipped, like every `transformers.initialization` function, when the tensor was loaded from a checkpoint)."""
    shape = weight.shape[-2:]
    side, prefix = square_grid(shape[0])
    init.copy_(weight, sincos_2d_table(side, side, shape[1], prefix).reshape(weight.shape).to(weight.dtype))


def tower_position_weight(vision_model: nn.Module) -> torch.Tensor | None:
    """The learned patch-position table of a transformers vision tower (CLIP / SigLIP `position_embedding`, ViT
    `position_embeddings`), or None when it has none (e.g. rotary or relative positions)."""
    embeddings = getattr(getattr(vision_model, "vision_model", vision_model), "embeddings", None)
    table = getattr(embeddings, "position_embedding", None)
    if isinstance(table, nn.Embedding):
        return table.weight
    table = getattr(embeddings, "position_embeddings", None)
    return table if isinstance(table, nn.Parameter) else None


def init_tower_sincos_positions(vision_model: nn.Module) -> None:
    """Sin-cos init of a tower built from its config, done once at construction: the tower is a sub-model whose own
    `_init_weights` owns that table, so the table is flagged as initialised to keep it from being redrawn."""
    table = tower_position_weight(vision_model)
    if table is None:
        raise ValueError(f"sincos_position_init needs a vision tower with a learned position table (CLIP, SigLIP, "
                         f"ViT); {type(vision_model).__name__} has none: set sincos_position_init=False.")
    init_sincos_positions(table)
    table._is_hf_initialized = True
