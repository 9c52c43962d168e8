"""Which media each text token sees: the latest one at or before it, none before the first."""

import torch


def media_index_from_mask(is_media: torch.Tensor) -> torch.Tensor:
    """(B, T) bool placeholders -> (B, T) 1-based index of the latest media item at or before each position
    (0 = none yet)."""
    return is_media.long().cumsum(dim=-1)


def media_index_from_ids(input_ids: torch.Tensor, media_token_id: int) -> torch.Tensor:
    """`media_index_from_mask` of the media tokens of `input_ids` (B, T)."""
    return media_index_from_mask(input_ids == media_token_id)


def media_token_mask(
    media_token_id: int,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    embeddings: torch.nn.Module | None = None,
) -> torch.Tensor:
    """(B, T) bool, True at `<visual>` placeholders: from the ids, or (without ids) where `inputs_embeds` holds the
    placeholder's embedding exactly (what the embedding layer gives for the media token)."""
    if input_ids is not None:
        return input_ids == media_token_id
    token = torch.tensor(media_token_id, dtype=torch.long, device=inputs_embeds.device)
    placeholder = embeddings(token).to(inputs_embeds.dtype)  # (D,)
    return (inputs_embeds == placeholder).all(dim=-1)


def media_attention_mask(media_index: torch.Tensor, media_mask: torch.Tensor, num_latents: int) -> torch.Tensor:
    """Which visual latents each text token may attend to.

    media_index: (B, T) from `media_index_from_ids`; media_mask: (B, M) bool, True for real media.
    Returns a bool mask (B, 1, T, M * num_latents): token t sees the latents of media ``media_index[t]`` only,
    tokens before any media and padded media see nothing.
    """
    b, m = media_mask.shape
    key_media = torch.arange(1, m + 1, device=media_index.device).repeat_interleave(num_latents)  # (M*L,)
    key_real = media_mask.repeat_interleave(num_latents, dim=1)  # (B, M*L)
    allowed = (media_index[:, :, None] == key_media[None, None, :]) & key_real[:, None, :]  # (B, T, M*L)
    return allowed[:, None]
