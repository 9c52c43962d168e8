"""Attention pooling: one learnable query summarises a padded sequence (padding never attended)."""

import torch
from torch import nn

from .attention import multihead_attention


class AttentionPooling(nn.Module):
    """Pools (B, T, D) hidden states into (B, D) with a learnable query, respecting the padding mask."""

    def __init__(self, dim: int, num_heads: int | None = None):
        super().__init__()
        self.num_heads = num_heads or max(1, dim // 64)
        if dim % self.num_heads:
            raise ValueError(f"AttentionPooling: dim={dim} is not divisible by num_heads={self.num_heads}.")
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # hidden_states: (B, T, D); attention_mask: (B, T), 1 = real token
        b = hidden_states.shape[0]
        q = self.to_q(self.query.to(hidden_states.dtype)).expand(b, -1, -1)  # (B, 1, D)
        k, v = self.to_kv(hidden_states).chunk(2, dim=-1)  # (B, T, D) each
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            if not mask.any(dim=-1).all():
                raise ValueError("AttentionPooling got a sample whose attention_mask is all zeros (an empty text).")
        pooled = self.to_out(multihead_attention(q, k, v, self.num_heads, mask))  # (B, 1, D)
        return self.norm(pooled[:, 0])
