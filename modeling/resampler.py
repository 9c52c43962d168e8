"""Perceiver resampler: a fixed number of learned latents summarise the visual tokens of one media item."""

import torch
from torch import nn

from .attention import FeedForward, multihead_attention


class PerceiverAttention(nn.Module):
    """Latents attend to ``[media tokens; latents]`` (Flamingo's keys/values include the latents)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        latents: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        latent_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # x: (N, S, D) media tokens; latents: (N, L, D); key_mask: (N, S) bool, True = real token;
        # latent_mask: (L, L) bool, True = latent i may attend to latent j
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # (N, S+L, inner)
        mask = None
        if key_mask is not None or latent_mask is not None:
            n, s, l = x.shape[0], x.shape[1], latents.shape[1]
            media_keys = x.new_ones(n, s, dtype=torch.bool) if key_mask is None else key_mask.bool()
            latent_keys = latents.new_ones(l, l, dtype=torch.bool) if latent_mask is None else latent_mask
            mask = torch.cat(
                [media_keys[:, None, :].expand(n, l, s), latent_keys[None].expand(n, l, l)], dim=2
            )[:, None]  # (N, 1, L, S+L)
        return self.to_out(multihead_attention(self.to_q(latents), k, v, self.heads, mask))


class PerceiverLayer(nn.Module):
    """One resampler layer: residual Perceiver attention then residual feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int):
        super().__init__()
        self.attn = PerceiverAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim, dim * ff_mult)

    def forward(
        self,
        x: torch.Tensor,
        latents: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        latent_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        latents = latents + self.attn(x, latents, key_mask, latent_mask)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """Maps the frames of one media item to ``num_latents`` visual latents plus ``num_extra_latents`` more.

    Frame (temporal) embeddings tell frames of a video apart; media-position embeddings tell the media of an
    interleaved document apart. The extra latents (CosMo: one) are not seen by the LM: they carry the image
    embedding of the contrastive loss. With ``extra_latents_as_keys=False`` the learned latents do not attend to
    the extra ones, so the latents the LM sees do not depend on them (an OpenFlamingo resampler exactly).
    """

    def __init__(
        self,
        dim: int,
        num_latents: int,
        depth: int,
        heads: int,
        head_dim: int,
        ff_mult: int,
        max_num_frames: int,
        max_num_media: int = 0,
        num_extra_latents: int = 1,
        extra_latents_as_keys: bool = True,
        num_spatial_tokens: int = 0,
    ):
        super().__init__()
        self.num_latents = num_latents
        self.extra_latents_as_keys = extra_latents_as_keys
        self.latents = nn.Parameter(torch.randn(num_latents + num_extra_latents, dim) * 0.02)
        self.frame_embeddings = nn.Parameter(torch.zeros(max_num_frames, dim))
        self.media_position_embeddings = nn.Parameter(torch.zeros(max_num_media, dim)) if max_num_media else None
        # Pooling by attention is blind to token order: these keep where each token came from (off in the papers,
        # whose pretrained towers carry position in their features; a tower trained from scratch needs them).
        self.spatial_embeddings = nn.Parameter(torch.zeros(num_spatial_tokens, dim)) if num_spatial_tokens else None
        self.layers = nn.ModuleList([PerceiverLayer(dim, heads, head_dim, ff_mult) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        media_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (N, F, P, D) features of N media with F frames of P tokens; frame_mask: (N, F) bool;
        media_positions: (N,) index of each media item in its sample. Returns (N, L + extra, D)."""
        n, f, p, d = x.shape
        if f > self.frame_embeddings.shape[0]:
            raise ValueError(
                f"Got {f} frames per media but max_num_frames={self.frame_embeddings.shape[0]}; sample fewer frames "
                "(processor num_frames=...) or raise max_num_frames in the config."
            )
        x = x + self.frame_embeddings[:f, None, :].to(x.dtype)  # (N, F, P, D)
        if self.spatial_embeddings is not None:
            if p != self.spatial_embeddings.shape[0]:
                raise ValueError(
                    f"Got {p} vision tokens per frame but the resampler has spatial embeddings for "
                    f"{self.spatial_embeddings.shape[0]}; set resampler_spatial_tokens to {p} (or 0 to disable them)."
                )
            x = x + self.spatial_embeddings.to(x.dtype)  # (N, F, P, D)
        if self.media_position_embeddings is not None and media_positions is not None:
            positions = media_positions.clamp(max=self.media_position_embeddings.shape[0] - 1)
            x = x + self.media_position_embeddings[positions][:, None, None, :].to(x.dtype)
        x = x.reshape(n, f * p, d)  # (N, F*P, D)
        key_mask = None if frame_mask is None else frame_mask[:, :, None].expand(n, f, p).reshape(n, f * p)
        latents = self.latents.to(x.dtype).unsqueeze(0).expand(n, -1, -1)  # (N, L+extra, D)
        latent_mask = None
        if not self.extra_latents_as_keys:
            total = self.latents.shape[0]
            latent_mask = torch.ones(total, total, dtype=torch.bool, device=x.device)
            latent_mask[: self.num_latents, self.num_latents :] = False  # (L+extra, L+extra)
        for layer in self.layers:
            latents = layer(x, latents, key_mask, latent_mask)
        return self.norm(latents)
