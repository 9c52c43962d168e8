"""Soft attentive temporal token merging for video: inside each vision block, between attention and MLP, every
spatial position attends across the frames (x + gate * attention, the gate starting at 0 so the image model is
unchanged at initialisation); the tower's output is then averaged over the real frames."""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import merge_heads, split_heads
from .token_merging import EncoderLayerContext, patch_encoder_layers


class TemporalAttention(nn.Module):
    """Attention across the F frames at each of the P spatial positions: q, k projected to `qk_dim` with
    `num_heads` heads, v = x itself; returns ``x + gate * attention`` with a learnable scalar gate (init 0)."""

    def __init__(self, dim: int, qk_dim: int = 256, num_heads: int = 8):
        super().__init__()
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"TemporalAttention: qk_dim={qk_dim} and dim={dim} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, qk_dim)
        self.k_proj = nn.Linear(dim, qk_dim)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (N, F, P, D) frames of N videos; frame_mask: (N, F) bool, True = real frame
        n, f, p, d = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(n * p, f, d)  # (N*P, F, D): one sequence over time per position
        q = split_heads(self.q_proj(seq), self.num_heads)  # (N*P, H, F, qk/H)
        k = split_heads(self.k_proj(seq), self.num_heads)
        v = split_heads(seq, self.num_heads)  # (N*P, H, F, D/H)
        mask = None
        if frame_mask is not None:
            frame_mask = frame_mask.bool() | ~frame_mask.bool().any(dim=-1, keepdim=True)  # no all-masked row
            mask = frame_mask.repeat_interleave(p, dim=0)[:, None, None, :]  # (N*P, 1, 1, F)
        attn = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))  # (N*P, F, D)
        attn = attn.reshape(n, p, f, d).permute(0, 2, 1, 3)  # (N, F, P, D)
        return x + self.gate.to(x.dtype) * attn


def frame_mean(x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N, F, P, D) -> (N, P, D): mean over the real frames."""
    if frame_mask is None:
        return x.mean(dim=1)
    w = frame_mask.to(x.dtype)[:, :, None, None]  # (N, F, 1, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1)


class TemporalContext(EncoderLayerContext):
    """Per-call state of temporal merging: the frame layout of the flattened (N*F) batch the tower sees."""

    def __init__(self, modules: nn.ModuleList, num_frames: int, frame_mask: torch.Tensor | None):
        self.modules, self.num_frames, self.frame_mask = modules, num_frames, frame_mask

    def wants(self, layer_idx: int) -> bool:
        return self.num_frames > 1 and layer_idx < len(self.modules)

    def after_attention(self, layer_idx, hidden_states, keys):
        nf, p, d = hidden_states.shape
        x = hidden_states.reshape(nf // self.num_frames, self.num_frames, p, d)
        return self.modules[layer_idx](x, self.frame_mask).reshape(nf, p, d)


class TemporalTokenMerging(nn.Module):
    """One `TemporalAttention` per encoder layer of a vision tower, and the frame pooling after it.

    The parameters live here (not inside the tower), so the tower's weights keep their names. Call `attach` once
    with the tower, then `encode` with video frames.
    """

    def __init__(self, dim: int, num_layers: int, qk_dim: int = 256, num_heads: int = 8):
        super().__init__()
        self.layers = nn.ModuleList([TemporalAttention(dim, qk_dim, num_heads) for _ in range(num_layers)])

    def attach(self, vision_model: nn.Module) -> None:
        layers = patch_encoder_layers(vision_model)
        if len(layers) != len(self.layers):
            raise ValueError(f"The tower has {len(layers)} encoder layers but temporal merging was built for {len(self.layers)}.")

    def context(self, num_frames: int, frame_mask: torch.Tensor | None = None) -> TemporalContext:
        return TemporalContext(self.layers, num_frames, frame_mask)

    def encode(
        self,
        vision_model: nn.Module,
        pixel_values: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        feature_layer: int = -1,
        **output_kwargs,
    ) -> tuple[torch.Tensor, nn.Module]:
        """pixel_values (N, F, C, H, W) -> (N, P, D): tower features of the chosen hidden-state index, with
        temporal attention inside the tower, averaged over the real frames; and the tower's output over the N*F
        frames (`output_hidden_states` / `output_attentions` passed on)."""
        n, f = pixel_values.shape[:2]
        if feature_layer != -1:
            output_kwargs["output_hidden_states"] = True
        out = vision_model(
            pixel_values=pixel_values.flatten(0, 1),
            layer_context=self.context(f, frame_mask),
            **output_kwargs,
            return_dict=True,
        )
        features = out.last_hidden_state if feature_layer == -1 else out.hidden_states[feature_layer]
        return frame_mean(features.reshape(n, f, *features.shape[1:]), frame_mask), out


__all__ = ["TemporalAttention", "TemporalContext", "TemporalTokenMerging", "frame_mean"]
