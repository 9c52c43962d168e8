"""Flamingo-style tanh-gated cross-attention from text tokens to the visual latents of their media."""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import FeedForward, multihead_attention


class MaskedCrossAttention(nn.Module):
    """Text queries attend to the latents of their own media; keys/values can be reused across decoding steps."""

    def __init__(self, dim: int, media_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(media_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def keys_values(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents: (B, M, L, Dv) -> keys, values (B, M*L, inner)."""
        b, m, l, d = latents.shape
        return self.to_kv(latents.reshape(b, m * l, d)).chunk(2, dim=-1)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); keys/values: (B, M*L, inner); allowed: (B, 1, T, M*L) bool
        has_media = allowed.any(dim=-1)  # (B, 1, T)
        # A row with nothing to attend to would give NaN in SDPA: let it attend anywhere, then zero its output.
        safe_mask = allowed | ~has_media[..., None]
        out = multihead_attention(self.to_q(self.norm(x)), keys, values, self.heads, safe_mask)  # (B, T, inner)
        out = out * has_media.transpose(1, 2).to(out.dtype)  # (B, T, inner)
        return self.to_out(out)


class GatedCrossAttentionBlock(GradientCheckpointingLayer):
    """x <- x + tanh(a) * xattn(x, media); x <- x + tanh(b) * ff(x); gates a = b = `gate_init` (default 0: the LM
    is unchanged at init)."""

    def __init__(
        self,
        dim: int,
        media_dim: int,
        heads: int,
        head_dim: int,
        ff_mult: int,
        compress_ratio: int,
        layer_idx: int,
        gate_init: float = 0.0,
    ):
        super().__init__()
        if heads % compress_ratio == 0:
            heads = heads // compress_ratio
        else:
            head_dim = head_dim // compress_ratio
        self.layer_idx = layer_idx
        self.attn = MaskedCrossAttention(dim, media_dim, heads, head_dim)
        self.attn_gate = nn.Parameter(torch.full((1,), float(gate_init)))
        self.ff = FeedForward(dim, dim * ff_mult // compress_ratio)
        self.ff_gate = nn.Parameter(torch.full((1,), float(gate_init)))

    def forward(
        self, hidden_states: torch.Tensor, latents: torch.Tensor, allowed: torch.Tensor, kv_cache: dict | None = None
    ) -> torch.Tensor:
        """hidden_states: (B, T, D); latents: (B, M, L, Dv); allowed: (B, 1, T, M*L) bool. Tensors are positional so
        that reentrant gradient checkpointing gives the latents their gradients; `kv_cache` (layer index -> keys,
        values of the latents) is filled on first use and reused while decoding."""
        keys_values = kv_cache.get(self.layer_idx) if kv_cache is not None else None
        if keys_values is None:
            keys_values = self.attn.keys_values(latents)
            if kv_cache is not None:
                kv_cache[self.layer_idx] = keys_values
        attn = self.attn(hidden_states, *keys_values, allowed)
        hidden_states = hidden_states + self.attn_gate.tanh() * attn
        return hidden_states + self.ff_gate.tanh() * self.ff(hidden_states)
