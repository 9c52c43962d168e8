"""The per-call visual state handed to the decoder layers as a keyword argument."""

import weakref
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree

from .media_masks import media_attention_mask


@dataclass
class VisualContext:
    """Everything the split LM needs for one forward call; owned by the caller, never stored on layers.

    latents: (B, M, L, Dv) visual latents seen by the cross-attention (None for a text-only call).
    media_mask: (B, M) bool, True for real media. media_index: (B, T) latest media index per token (0 = none).
    kv_cache: layer index -> (keys, values) of the visual latents, filled once and reused while decoding.
    split_hidden: (B, T, D) output of the last text-only layer, written by that layer's wrapper.
    stop_at_split: the layers above the split pass their input through unchanged (pure text embeddings: only
        the text-only layers run).

    FSDP2 hands each wrapped layer a copy of this object (`dataclasses.replace`, to hook its tensors): layers write
    through `set_split_hidden` and read the mask through `attention_mask`, which reach the caller's own context.
    """

    latents: torch.Tensor | None = None
    media_mask: torch.Tensor | None = None
    media_index: torch.Tensor | None = None
    kv_cache: dict | None = None
    split_hidden: torch.Tensor | None = None
    stop_at_split: bool = False
    _mask: torch.Tensor | None = field(default=None, repr=False)
    # The caller's context; a weak reference, which FSDP's traversal of dataclass fields leaves as it is.
    _root: weakref.ref | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self._root is None:
            self._root = weakref.ref(self)

    @property
    def root(self) -> "VisualContext":
        return self._root() or self

    def set_split_hidden(self, hidden_states: torch.Tensor) -> None:
        self.split_hidden = self.root.split_hidden = hidden_states

    @property
    def has_media(self) -> bool:
        return self.latents is not None and self.latents.shape[1] > 0

    def attention_mask(self) -> torch.Tensor:
        """(B, 1, T, M*L) bool mask of the cross-attention, computed once per call and shared by all blocks."""
        root = self.root
        if root._mask is None:
            root._mask = media_attention_mask(self.media_index, self.media_mask, self.latents.shape[2])
        return root._mask


_CHILDREN = ("latents", "media_mask", "media_index", "kv_cache", "split_hidden", "_mask")


def _flatten(context: VisualContext) -> tuple[list, bool]:
    return [getattr(context, name) for name in _CHILDREN], context.stop_at_split


def _flatten_with_keys(context: VisualContext) -> tuple[list, bool]:
    return [(pytree.GetAttrKey(name), getattr(context, name)) for name in _CHILDREN], context.stop_at_split


def _unflatten(children, stop_at_split: bool) -> VisualContext:
    return VisualContext(**dict(zip(_CHILDREN, children)), stop_at_split=stop_at_split)


# A pytree of tensors, so that `torch.export` (and transformers' exporters, which capture each submodule's inputs)
# can take the split LM's inputs as they are.
pytree.register_pytree_node(VisualContext, _flatten, _unflatten, serialized_type_name=f"{__name__}.VisualContext",
                            flatten_with_keys_fn=_flatten_with_keys)
