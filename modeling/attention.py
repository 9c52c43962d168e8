"""Small attention building blocks shared by the resampler, the cross-attention and the pooling heads."""

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """Pre-norm MLP: LayerNorm -> Linear -> GELU -> Linear (no biases, as Flamingo)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, inner_dim, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, _ = x.shape
    return x.view(b, s, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) -> (B, S, H*D)."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def multihead_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Scaled dot-product attention through SDPA.

    q: (B, Sq, H*D); k, v: (B, Sk, H*D); mask: bool, broadcastable to (B, H, Sq, Sk), True = may attend.
    Returns (B, Sq, H*D).
    """
    out = F.scaled_dot_product_attention(
        split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads), attn_mask=mask
    )
    return merge_heads(out)
