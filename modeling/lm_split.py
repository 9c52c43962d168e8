"""Split a transformers decoder-only LM in two without forking its code.

Every decoder layer is wrapped by `MultimodalDecoderLayer`. The wrapper takes the per-call `VisualContext` as a
keyword argument (transformers decoders forward their ``**kwargs`` to each layer), runs an optional gated
cross-attention block before the wrapped layer, and records the output of the last text-only layer (with no
text-only layer, `unimodal_depth=0`, the input of the first layer: the token embeddings). The LM's tensor-parallel
plan is rewritten for the extra `.layer.` level of the wrapped layers.
"""

import torch
from torch import nn

from .visual_context import VisualContext


def find_decoder_layers(language_model: nn.Module, num_layers: int) -> tuple[nn.Module, str, nn.ModuleList]:
    """The shallowest `nn.ModuleList` with `num_layers` children: the decoder stack of any HF decoder."""
    best = None
    for name, module in language_model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            depth = name.count(".")
            if best is None or depth < best[0]:
                best = (depth, name, module)
    if best is None:
        raise ValueError(
            f"Could not find a ModuleList of {num_layers} decoder layers in {type(language_model).__name__}; "
            "CosMo needs a decoder-only LM whose layers are held in one nn.ModuleList."
        )
    _, name, layers = best
    parent_name, _, attr = name.rpartition(".")
    parent = language_model.get_submodule(parent_name) if parent_name else language_model
    return parent, attr, layers


class MultimodalDecoderLayer(nn.Module):
    """A decoder layer with an optional gated cross-attention block run before it."""

    def __init__(
        self,
        layer: nn.Module,
        layer_idx: int,
        cross_attention: nn.Module | None,
        is_split_output: bool,
        is_split_input: bool = False,
        is_text_only: bool = False,
    ):
        super().__init__()
        self.layer = layer
        self.cross_attention = cross_attention
        self.layer_idx = layer_idx
        self.is_split_output = is_split_output
        self.is_split_input = is_split_input
        self.is_text_only = is_text_only

    def __getattr__(self, name: str):
        # Decoders read attributes of their layers (e.g. `attention_type` for sliding windows): delegate them.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states: torch.Tensor, *args, visual_context: VisualContext | None = None, **kwargs):
        if self.is_split_input and visual_context is not None:
            visual_context.set_split_hidden(hidden_states)
        if visual_context is not None and visual_context.stop_at_split and not self.is_text_only:
            return hidden_states
        if self.cross_attention is not None and visual_context is not None and visual_context.has_media:
            hidden_states = self.cross_attention(
                hidden_states, visual_context.latents, visual_context.attention_mask(), kv_cache=visual_context.kv_cache
            )
        outputs = self.layer(hidden_states, *args, **kwargs)
        if self.is_split_output and visual_context is not None:
            visual_context.set_split_hidden(outputs[0] if isinstance(outputs, tuple) else outputs)
        return outputs


def split_language_model(language_model: nn.Module, config, make_cross_attention) -> nn.ModuleList:
    """Wrap the decoder layers of `language_model` in place; returns the new layer list.

    `make_cross_attention(layer_idx)` builds the block inserted before layer `layer_idx` (for the layers listed by
    `config.cross_attention_layer_ids`); the output of layer `config.unimodal_depth - 1` is the split point (the
    input of layer 0 when `unimodal_depth` is 0).
    """
    num_layers = config.text_config.num_hidden_layers
    parent, attr, layers = find_decoder_layers(language_model, num_layers)
    xattn_ids = set(config.cross_attention_layer_ids)
    wrapped = nn.ModuleList(
        [
            MultimodalDecoderLayer(
                layer,
                idx,
                make_cross_attention(idx) if idx in xattn_ids else None,
                is_split_output=idx == config.unimodal_depth - 1,
                is_split_input=idx == 0 and config.unimodal_depth == 0,
                is_text_only=idx < config.unimodal_depth,
            )
            for idx, layer in enumerate(layers)
        ]
    )
    setattr(parent, attr, wrapped)
    layers_path = next(name for name, module in language_model.named_modules() if module is wrapped)
    _rewrite_tp_plan(language_model, layers_path)
    return wrapped


def _rewrite_tp_plan(language_model: nn.Module, layers_path: str) -> None:
    """Entries `<layers>.*.<sub>` of the LM's tensor-parallel plan name `<layers>.*.layer.<sub>` once wrapped."""
    plan = getattr(language_model, "_tp_plan", None)
    if not plan:
        return
    prefix = f"{layers_path}.*."
    language_model._tp_plan = {
        (prefix + "layer." + key[len(prefix) :] if key.startswith(prefix) else key): value
        for key, value in plan.items()
    }
