"""SimVLG: frozen vision tower -> Linear -> token-merging connector -> Linear -> frozen causal LM (soft prompt)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .attention import multihead_attention
from .compat import (
    CACHE_NAME,
    NestedOutput,
    accepts_old_cache_name,
    cache_field,
    cache_kwargs,
    output_cache,
    pop_cache,
)
from .configuration_simvlg import SimVlgConfig
from .media_masks import media_token_mask
from .towers import (
    as_media_batch,
    attach_lm_head,
    build_from_backbones,
    given_output_flags,
    mark_initialized,
    stop_at_endofchunk,
)
from .temporal_merging import TemporalAttention, TemporalTokenMerging, frame_mean
from .token_merging import (
    MergeSchedule,
    MergeState,
    TokenMergeContext,
    bipartite_soft_matching,
    has_cls_token,
    head_mean,
    merge_weighted,
    patch_encoder_layers,
    resolve_r,
    size_bias,
)


@dataclass
class SimVlgVisualTokens:
    """Media encoded once: the merged visual tokens that replace each `<visual>` placeholder.

    embeds: (B, M, K, D) tokens in the LM width (K per media item); mask: (B, M, K) bool, True = real token;
    sizes: (B, M, K) how many vision patches each token holds; media_mask: (B, M) bool, True = real media.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    sizes: torch.Tensor
    media_mask: torch.Tensor

    @property
    def tokens_per_media(self) -> int:
        return self.embeds.shape[2]

    def repeat_interleave(self, factor: int) -> "SimVlgVisualTokens":
        """Each sample repeated `factor` times (beam search / several sequences per prompt)."""
        if factor == 1:
            return self
        return SimVlgVisualTokens(*(t.repeat_interleave(factor, dim=0) for t in (self.embeds, self.mask, self.sizes, self.media_mask)))


@dataclass
@cache_field
class SimVlgModelOutput(NestedOutput):
    """Outputs of `SimVlgModel`: LM hidden states over the sequence with the visual tokens in place.

    Called with media only (no text), `last_hidden_state` holds the visual tokens (B, M*K, D) in the LM width.
    `attention_mask` is the mask of the LM sequence (K positions per media item). `image_outputs`: the media
    encoded in this call (`get_image_features`), None when none were.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    attention_mask: torch.Tensor | None = None
    visual_tokens: SimVlgVisualTokens | None = None


@dataclass
@cache_field
class SimVlgOutput(NestedOutput):
    """Outputs of `SimVlgForConditionalGeneration`: the LM loss over the text tokens (visual tokens ignored).
    `logits` and `labels` are those of the LM sequence (K positions per media item: a prompt with one `<visual>`
    placeholder per media item gives T + M * (K - 1) positions)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    labels: torch.LongTensor | None = None
    attention_mask: torch.Tensor | None = None
    visual_tokens: SimVlgVisualTokens | None = None


# ---------------------------------------------------------------------------------------------- connector
class SimVlgConnectorLayer(GradientCheckpointingLayer):
    """A BERT (post-norm) Transformer layer that merges `r` tokens after self-attention (ToMe).

    Attention adds log(token size) to its logits (proportional attention) and never looks at padding (size 0).
    """

    def __init__(self, config: SimVlgConfig):
        super().__init__()
        dim = config.connector_hidden_size
        self.num_heads = config.connector_num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim, eps=config.connector_layer_norm_eps)
        self.fc1 = nn.Linear(dim, config.connector_intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.connector_intermediate_size, dim)
        self.output_norm = nn.LayerNorm(dim, eps=config.connector_layer_norm_eps)
        self.dropout = nn.Dropout(config.connector_dropout)

    def forward(
        self, hidden_states: torch.Tensor, size: torch.Tensor, r: int = 0, num_protected: int = 0,
        proportional_attention: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # hidden_states: (B, N, C); size: (B, N) patches per token (0 = padding)
        bias = size_bias(size, hidden_states.dtype, proportional_attention)  # (B, 1, 1, N)
        keys = self.k_proj(hidden_states)
        attn = multihead_attention(self.q_proj(hidden_states), keys, self.v_proj(hidden_states), self.num_heads, bias)
        hidden_states = self.attention_norm(hidden_states + self.dropout(self.o_proj(attn)))
        if r > 0:  # (B, N, C) -> (B, N - r, C)
            plan = bipartite_soft_matching(head_mean(keys, self.num_heads), r, size > 0, num_protected)
            hidden_states, size = merge_weighted(plan, hidden_states, size)
        ff = self.fc2(self.act(self.fc1(hidden_states)))
        return self.output_norm(hidden_states + self.dropout(ff)), size


class SimVlgConnector(nn.Module):
    """LayerNorm on the projected vision tokens, then the merging layers."""

    def __init__(self, config: SimVlgConfig):
        super().__init__()
        self.input_norm = nn.LayerNorm(config.connector_hidden_size, eps=config.connector_layer_norm_eps)
        self.dropout = nn.Dropout(config.connector_dropout)
        self.layers = nn.ModuleList([SimVlgConnectorLayer(config) for _ in range(config.connector_num_layers)])

    def forward(
        self, hidden_states: torch.Tensor, size: torch.Tensor, r_per_layer: list[int], num_protected: int,
        proportional_attention: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states = self.dropout(self.input_norm(hidden_states))
        for layer, r in zip(self.layers, r_per_layer):
            hidden_states, size = layer(
                hidden_states, size, r=r, num_protected=num_protected, proportional_attention=proportional_attention
            )
        return hidden_states, size


# ------------------------------------------------------------------------------------------ sequence layout
def _expanded_layout(is_media: torch.Tensor, num_media: torch.Tensor, k: int) -> bool:
    """True when every sample already holds K consecutive placeholders per media item (the LM layout)."""
    if k == 1 or not bool((num_media > 0).any()):
        return True
    rows = torch.nonzero(num_media > 0).flatten()
    t = is_media.shape[1]
    first = is_media[rows].float().argmax(dim=-1)  # first placeholder of each sample with media
    window = first[:, None] + torch.arange(k, device=is_media.device)
    runs = is_media[rows[:, None], window.clamp(max=t - 1)] & (window < t)
    expanded = runs.all(dim=-1)
    if bool(expanded.any()) and not bool(expanded.all()):
        raise ValueError(f"Some samples hold {k} `<visual>` tokens per media item and others one; use one layout.")
    return bool(expanded.all())


def _expansion_index(
    is_media: torch.Tensor, attention_mask: torch.Tensor | None, num_media: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each position of the expanded sequence comes from, when the first ``num_media[b]`` placeholders of
    sample b are repeated `k` times; re-padded on the side the input was padded (left when any row starts with
    padding). Returns source (B, T') positions in the input, valid (B, T') False on new padding, and the
    placeholders that expand (B, T)."""
    placeholder = is_media & (is_media.long().cumsum(-1) <= num_media[:, None])
    reps = torch.where(placeholder, k, 1)  # (B, T)
    lengths = reps.sum(-1)  # (B,)
    new_t = int(lengths.max())
    shift = torch.zeros_like(lengths)
    if attention_mask is not None and bool((attention_mask[:, 0] == 0).any()):
        shift = new_t - lengths  # left padding stays on the left
    slot = torch.arange(new_t, device=is_media.device)[None, :] - shift[:, None]  # (B, T') index among own tokens
    source = torch.searchsorted(reps.cumsum(-1), slot.clamp_min(0), right=True)  # (B, T')
    valid = (slot >= 0) & (slot < lengths[:, None])
    return torch.where(valid, source, 0), valid, placeholder


def _gather_positions(x: torch.Tensor, source: torch.Tensor, valid: torch.Tensor, fill) -> torch.Tensor:
    """x (B, T, ...) -> (B, T', ...) taken at `source`, `fill` where not `valid`."""
    index = source.reshape(*source.shape, *([1] * (x.dim() - 2))).expand(*source.shape, *x.shape[2:])
    out = x.gather(1, index)
    return torch.where(valid.reshape(index.shape[:2] + (1,) * (x.dim() - 2)), out, fill)


def expand_media_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    media_token_id: int,
    num_media: torch.Tensor,
    tokens_per_media: int,
    pad_token_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Repeat each of the first ``num_media[b]`` `<visual>` placeholders of sample b `tokens_per_media` times
    (later ones are plain text); re-pad on the side the input was padded (left when any row starts with padding).
    Labels of the placeholders become -100. Returns (input_ids, attention_mask, labels), (B, T')."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    is_media = input_ids == media_token_id
    source, valid, placeholder = _expansion_index(is_media, attention_mask, num_media, tokens_per_media)
    new_ids = _gather_positions(input_ids, source, valid, pad_token_id)
    new_mask = _gather_positions(mask, source, valid, 0)
    new_labels = None
    if labels is not None:
        new_labels = _gather_positions(labels.masked_fill(placeholder, -100), source, valid, -100)
    return new_ids, new_mask, new_labels


# -------------------------------------------------------------------------------------------------- models
class SimVlgPreTrainedModel(PreTrainedModel):
    config_class = SimVlgConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # proportional attention is a float bias
    _can_compile_fullgraph = False
    _no_split_modules = ["SimVlgConnectorLayer", "TemporalAttention"]
    _skip_keys_device_placement = [CACHE_NAME]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TemporalAttention):
            init.zeros_(module.gate)

    @classmethod
    def from_backbones(cls, vision: str, text: str, **config_kwargs):
        """Build a SimVLG model around pretrained towers given by local path or Hub id (`vision` may be a dual
        encoder such as CLIP or SigLIP: its vision tower is used). Extra keyword arguments go to `SimVlgConfig`."""
        return build_from_backbones(cls, vision, text, **config_kwargs)


class SimVlgModel(SimVlgPreTrainedModel):
    """Vision tower, projections, merging connector and the LM (no LM head).

    The connector merges ``config.merge_r`` tokens per layer, read at every forward; set `merge_schedule` (a
    `MergeSchedule`) to drive it by training progress instead.
    """

    def __init__(self, config: SimVlgConfig, vision_model: PreTrainedModel | None = None, causal_lm=None):
        super().__init__(config)
        if vision_model is None:
            vision_model = AutoModel.from_config(config.vision_config)
        else:
            mark_initialized(vision_model)
        language_model = AutoModel.from_config(config.text_config) if causal_lm is None else causal_lm.base_model
        if causal_lm is not None:
            mark_initialized(language_model)
        self.vision_model = vision_model
        self.language_model = language_model
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.connector_hidden_size)
        self.connector = SimVlgConnector(config)
        self.language_projection = nn.Linear(config.connector_hidden_size, config.text_config.hidden_size)
        self.temporal_merging = None
        num_vision_layers = config.vision_config.num_hidden_layers
        if config.temporal_merging:
            self.temporal_merging = TemporalTokenMerging(
                config.vision_config.hidden_size, num_vision_layers, config.temporal_qk_dim, config.temporal_num_heads
            )
            self.temporal_merging.attach(self.vision_model)
        if any(resolve_r(config.vision_merge_r, num_vision_layers)):
            patch_encoder_layers(self.vision_model)
        protect = config.merge_protect_cls
        self.num_protected_tokens = int(has_cls_token(self.vision_model) if protect is None else protect)
        self.merge_schedule: MergeSchedule | None = None
        self.post_init()
        self.apply_freezing()

    def apply_freezing(self) -> None:
        self.vision_model.requires_grad_(not self.config.freeze_vision_tower)
        self.language_model.requires_grad_(not self.config.freeze_language_model)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ----------------------------------------------------------------------------------------------- media
    def connector_r(self) -> list[int]:
        """Tokens each connector layer merges at this step."""
        r = self.merge_schedule if self.merge_schedule is not None else self.config.merge_r
        return resolve_r(r, self.config.connector_num_layers)

    def _tower_needs_grad(self, temporal: bool) -> bool:
        if not torch.is_grad_enabled():
            return False
        trainable = any(p.requires_grad for p in self.vision_model.parameters())
        if temporal:
            trainable = trainable or any(p.requires_grad for p in self.temporal_merging.parameters())
        return trainable

    def _vision_features(
        self, media: torch.Tensor, frame_mask: torch.Tensor, **output_kwargs
    ) -> tuple[torch.Tensor, MergeState, ModelOutput]:
        """media (N, F, C, H, W) -> tokens (N, P, Dv) of the configured layer, their merge state, and the tower's
        output (`output_hidden_states` / `output_attentions` as asked)."""
        n, f = media.shape[:2]
        layer = self.config.vision_feature_layer
        temporal = self.temporal_merging is not None and f > 1
        vision_r = resolve_r(self.config.vision_merge_r, self.config.vision_config.num_hidden_layers)
        context = None
        if layer != -1:
            output_kwargs["output_hidden_states"] = True
        with torch.set_grad_enabled(self._tower_needs_grad(temporal)):
            if temporal:
                features, out = self.temporal_merging.encode(
                    self.vision_model, media, frame_mask, layer, **output_kwargs
                )
            else:
                if any(vision_r):
                    if f > 1:
                        raise ValueError("Videos with vision_merge_r > 0 need temporal_merging off and one frame; "
                                         "merge in the connector (merge_r) instead.")
                    context = TokenMergeContext(
                        r=vision_r, num_protected=self.num_protected_tokens,
                        proportional_attention=self.config.merge_proportional_attention,
                    )
                extra = {} if context is None else {"layer_context": context}
                out = self.vision_model(pixel_values=media.flatten(0, 1), **output_kwargs, **extra, return_dict=True)
                features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
                features = frame_mean(features.reshape(n, f, *features.shape[1:]), frame_mask)
        if context is not None and context.state is not None:
            return features, context.state, out
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return features, MergeState.start(mask), out

    def _encode(
        self, pixel_values, media_mask=None, frame_mask=None, **output_kwargs
    ) -> tuple[SimVlgVisualTokens, BaseModelOutputWithPooling]:
        """Media -> merged visual tokens, and the image outputs (`get_image_features`)."""
        pixel_values = as_media_batch(pixel_values)
        b, m, f = pixel_values.shape[:3]
        device = pixel_values.device
        media_mask = torch.ones(b, m, dtype=torch.bool, device=device) if media_mask is None else media_mask.bool()
        frame_mask = media_mask[:, :, None].expand(b, m, f) if frame_mask is None else frame_mask.bool()
        frame_mask = frame_mask & media_mask[:, :, None]
        media = pixel_values[media_mask].to(self.vision_model.dtype)  # (n, F, C, H, W)
        features, state, tower = self._vision_features(media, frame_mask[media_mask], **output_kwargs)  # (n, P, Dv)
        x = self.visual_projection(features)  # (n, P, Dc)
        x, size = self.connector(
            x, state.size, self.connector_r(), self.num_protected_tokens, self.config.merge_proportional_attention
        )
        x = self.language_projection(x)  # (n, K, Dt)
        k = x.shape[1]
        embeds = x.new_zeros(b, m, k, x.shape[-1])
        embeds[media_mask] = x
        sizes = size.new_zeros(b, m, k)
        sizes[media_mask] = size
        visual = SimVlgVisualTokens(embeds, sizes > 0, sizes, media_mask)
        image_outputs = BaseModelOutputWithPooling(
            last_hidden_state=features, pooler_output=x,
            hidden_states=getattr(tower, "hidden_states", None), attentions=getattr(tower, "attentions", None),
        )
        return visual, image_outputs

    def encode_media(
        self,
        pixel_values: torch.Tensor,
        media_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> SimVlgVisualTokens:
        """pixel_values (B, M, F, C, H, W) -> merged visual tokens in the LM width (padded media/frames skipped)."""
        return self._encode(pixel_values, media_mask, frame_mask)[0]

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        media_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Media -> `last_hidden_state` (n, P, Dv): the vision-tower features of the real media fed to the connector;
        `pooler_output` (n, K, D): the merged visual tokens of each real media item in the LM width (samples, then
        media, in order);
        `hidden_states` / `attentions` of the vision tower when asked."""
        return self._encode(
            pixel_values, media_mask, frame_mask, **given_output_flags(output_hidden_states, output_attentions)
        )[1]

    # ---------------------------------------------------------------------------------------------- layout
    def placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        """(B, T) True at `<visual>` placeholders: from `input_ids`, or the placeholder's embedding in
        `inputs_embeds` (the embedding of `config.media_token_id`)."""
        return media_token_mask(self.config.media_token_id, input_ids, inputs_embeds, self.get_input_embeddings())

    def expand_media_tokens(self, input_ids, attention_mask, labels, visual: SimVlgVisualTokens):
        """The input with K `<visual>` tokens per media item (see `expand_media_tokens`); already expanded inputs
        are returned unchanged."""
        num_media = visual.media_mask.sum(-1)
        k = visual.tokens_per_media
        if _expanded_layout(input_ids == self.config.media_token_id, num_media, k):
            return input_ids, attention_mask, labels
        pad = self.config.text_config.pad_token_id
        return expand_media_tokens(
            input_ids, attention_mask, labels, self.config.media_token_id, num_media, k, 0 if pad is None else pad
        )

    def _check_media_tokens(self, is_media: torch.Tensor, visual: SimVlgVisualTokens) -> None:
        have = is_media.sum(-1)
        need = visual.media_mask.sum(-1) * visual.tokens_per_media
        for i in torch.nonzero(have < need).flatten().tolist():
            raise ValueError(
                f"Sample {i} has {int(visual.media_mask[i].sum())} images/videos but too few `<visual>` tokens "
                f"(id {self.config.media_token_id}); put one `<visual>` placeholder per media item (the processor does)."
            )

    def build_lm_inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        visual: SimVlgVisualTokens,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Token embeddings with the visual tokens in place of the placeholders (given by `input_ids` or found in
        `inputs_embeds`); one placeholder per media item is first repeated K times. Returns inputs_embeds
        (B, T', D), attention_mask (B, T'), labels and shift_labels (B, T') with -100 where a visual token is the
        target."""
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if visual.media_mask.shape[0] != batch:
            visual = visual.repeat_interleave(batch // visual.media_mask.shape[0])
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        is_media = self.placeholder_mask(input_ids, inputs_embeds)  # (B, T)
        num_media, k = visual.media_mask.sum(-1), visual.tokens_per_media
        mask_2d = attention_mask is not None and attention_mask.dim() == 2
        if not _expanded_layout(is_media, num_media, k):
            source, valid, placeholder = _expansion_index(is_media, attention_mask if mask_2d else None, num_media, k)
            mask = torch.ones_like(is_media, dtype=torch.long) if attention_mask is None else attention_mask
            attention_mask = _gather_positions(mask, source, valid, 0)
            inputs_embeds = _gather_positions(inputs_embeds, source, valid, 0.0)
            if labels is not None:
                labels = _gather_positions(labels.masked_fill(placeholder, -100), source, valid, -100)
            if shift_labels is not None:
                shift_labels = _gather_positions(shift_labels, source, valid, -100)
            is_media = _gather_positions(placeholder, source, valid, False)
            mask_2d = True
        self._check_media_tokens(is_media, visual)
        slots = is_media & (is_media.long().cumsum(-1) <= (num_media * k)[:, None])  # later ones are plain text
        visual_embeds = visual.embeds[visual.media_mask].to(inputs_embeds.dtype)  # (n, K, D), samples then media
        inputs_embeds = inputs_embeds.masked_scatter(slots[..., None], visual_embeds)
        if mask_2d:
            visual_mask = visual.mask[visual.media_mask].to(attention_mask.dtype)
            attention_mask = attention_mask.masked_scatter(slots, visual_mask)
        if labels is not None:
            labels = labels.masked_fill(slots, -100)
        if shift_labels is not None:  # a position whose next token is visual has no text target
            shift_labels = shift_labels.masked_fill(F.pad(slots[:, 1:], (0, 1)), -100)
        return inputs_embeds, attention_mask, labels, shift_labels

    def merge_media(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        media_mask: torch.Tensor | None,
        frame_mask: torch.Tensor | None,
        visual_tokens: SimVlgVisualTokens | None,
        cache: Cache | None,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        **output_kwargs,
    ) -> dict:
        """The LM inputs of a forward: in the prefill (no cached tokens) with media, the visual tokens are put in
        place; later steps are text only. Returns the keyword arguments of the LM call, plus what was encoded."""
        lm = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
              "labels": labels, "shift_labels": shift_labels, "visual_tokens": visual_tokens, "image_outputs": None}
        prefill = cache is None or cache.get_seq_length() == 0
        if not prefill or (visual_tokens is None and pixel_values is None):
            return lm
        if visual_tokens is None:
            visual_tokens, lm["image_outputs"] = self._encode(pixel_values, media_mask, frame_mask, **output_kwargs)
        embeds, mask, labels, shift_labels = self.build_lm_inputs(
            input_ids, attention_mask, visual_tokens, labels, inputs_embeds, shift_labels
        )
        lm.update(input_ids=None, inputs_embeds=embeds, attention_mask=mask, labels=labels, shift_labels=shift_labels,
                  visual_tokens=visual_tokens)
        return lm

    @accepts_old_cache_name
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        media_mask: torch.BoolTensor | None = None,
        frame_mask: torch.BoolTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        visual_tokens: SimVlgVisualTokens | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> SimVlgModelOutput:
        r"""
        pixel_values: (B, M, F, C, H, W) media of each sample (images have F = 1); (B, C, H, W) means one image each.
        media_mask: (B, M) True for real media; frame_mask: (B, M, F) True for real frames.
        input_ids: one `<visual>` placeholder per media item (as the processor writes them, repeated K times here)
            or K consecutive ones; the first placeholders of each sample are replaced by the merged visual tokens of
            its media. With `inputs_embeds` instead, the placeholders are the embeddings of `config.media_token_id`.
        visual_tokens: media encoded by an earlier call (`encode_media`); replaces `pixel_values`.
        """
        cache = pop_cache(cache, kwargs)
        flags = given_output_flags(output_hidden_states, output_attentions)
        if input_ids is None and inputs_embeds is None:
            if pixel_values is None:
                raise ValueError("Pass input_ids (text), pixel_values (media), or both.")
            visual, image_outputs = self._encode(pixel_values, media_mask, frame_mask, **flags)
            return SimVlgModelOutput(
                last_hidden_state=visual.embeds.flatten(1, 2), image_outputs=image_outputs, visual_tokens=visual
            )
        lm = self.merge_media(
            input_ids, inputs_embeds, attention_mask, pixel_values, media_mask, frame_mask, visual_tokens, cache,
            **flags,
        )
        return self._run_lm(lm, position_ids, cache, use_cache, flags, kwargs)

    def _run_lm(self, lm: dict, position_ids, cache, use_cache, flags: dict, kwargs: dict) -> SimVlgModelOutput:
        attention_mask = lm["attention_mask"]
        inputs = lm["input_ids"] if lm["input_ids"] is not None else lm["inputs_embeds"]
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Positions count real tokens, as `generate` does, so padded and unpadded runs agree.
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            position_ids = position_ids[:, -inputs.shape[1]:]
        outputs = self.language_model(
            input_ids=lm["input_ids"],
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            inputs_embeds=lm["inputs_embeds"],
            use_cache=use_cache,
            **flags,
            **kwargs,
            return_dict=True,
        )
        return SimVlgModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=lm["image_outputs"],
            attention_mask=attention_mask,
            visual_tokens=lm["visual_tokens"],
        )


class SimVlgForConditionalGeneration(SimVlgPreTrainedModel, GenerationMixin):
    """SimVLG with its LM head: captioning / VQA with the merged visual tokens as a soft prompt; LM loss only."""

    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: SimVlgConfig, vision_model: PreTrainedModel | None = None, causal_lm=None):
        super().__init__(config)
        self.model = SimVlgModel(config, vision_model=vision_model, causal_lm=causal_lm)
        attach_lm_head(self, self.model.language_model, config, causal_lm)
        self.post_init()
        self.model.apply_freezing()
        self.lm_head.requires_grad_(not config.freeze_language_model)
        stop_at_endofchunk(self)

    @property
    def merge_schedule(self) -> MergeSchedule | None:
        return self.model.merge_schedule

    @merge_schedule.setter
    def merge_schedule(self, value: MergeSchedule | None) -> None:
        self.model.merge_schedule = value

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def encode_media(self, pixel_values, media_mask=None, frame_mask=None) -> SimVlgVisualTokens:
        return self.model.encode_media(pixel_values, media_mask, frame_mask)

    def get_image_features(
        self, pixel_values, media_mask=None, frame_mask=None, **kwargs
    ) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, media_mask, frame_mask, **kwargs)

    @accepts_old_cache_name
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        media_mask: torch.BoolTensor | None = None,
        frame_mask: torch.BoolTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        visual_tokens: SimVlgVisualTokens | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> SimVlgOutput:
        r"""
        labels: (B, T) next-token targets (-100 = ignored) aligned with `input_ids`, as the processor builds them
            with `return_labels=True`; they are expanded with the visual tokens (which get -100). `shift_labels`
            (already shifted targets) are expanded the same way.
        Other arguments as `SimVlgModel.forward`.
        """
        cache = pop_cache(cache, kwargs)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        flags = given_output_flags(output_hidden_states, output_attentions)
        lm = self.model.merge_media(
            input_ids, inputs_embeds, attention_mask, pixel_values, media_mask, frame_mask, visual_tokens, cache,
            labels=labels, shift_labels=kwargs.pop("shift_labels", None), **flags,
        )
        outputs = self.model._run_lm(lm, position_ids, cache, use_cache, flags, kwargs)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if lm["labels"] is not None or lm["shift_labels"] is not None:
            extra = {} if lm["shift_labels"] is None else {"shift_labels": lm["shift_labels"]}
            loss = self.loss_function(
                logits, lm["labels"], vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=num_items_in_batch, **extra,
            )
        return SimVlgOutput(
            loss=loss,
            logits=logits,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            labels=lm["labels"],
            attention_mask=outputs.attention_mask,
            visual_tokens=outputs.visual_tokens,
        )

    # ------------------------------------------------------------------------------------------- generation
    def _one_placeholder_per_media(self, input_ids, inputs_embeds, pixel_values, media_mask, visual_tokens) -> bool:
        """Whether every sample with media holds exactly one placeholder per media item (the processor's layout)."""
        if visual_tokens is not None:
            num_media = visual_tokens.media_mask.sum(-1)
        elif media_mask is not None:
            num_media = media_mask.sum(-1)
        else:
            media = as_media_batch(pixel_values)
            num_media = torch.full((media.shape[0],), media.shape[1], device=media.device)
        have = self.model.placeholder_mask(input_ids, inputs_embeds).sum(-1)  # (B,)
        num_media = num_media.repeat_interleave(have.shape[0] // num_media.shape[0])
        with_media = num_media > 0
        return bool(with_media.any()) and bool((have[with_media] == num_media[with_media]).all())

    @accepts_old_cache_name
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        media_mask: torch.BoolTensor | None = None,
        frame_mask: torch.BoolTensor | None = None,
        visual_tokens: SimVlgVisualTokens | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ):
        """Generation with the visual tokens as a soft prompt. A prompt with K `<visual>` tokens per media item is
        the LM's layout and generates as any transformers decoder. A prompt with one placeholder per media item
        (the processor's layout) is laid out here first: the media are encoded once and each placeholder repeated
        K times; the returned sequences start with the prompt as given (scores, hidden states and the cache are
        those of the expanded prompt: to continue from the cache, pass the media again)."""
        media = {"pixel_values": pixel_values, "media_mask": media_mask, "frame_mask": frame_mask,
                 "visual_tokens": visual_tokens}
        media = {k: v for k, v in media.items() if v is not None}
        has_prompt = input_ids is not None or inputs_embeds is not None
        if not has_prompt or not media or not self._one_placeholder_per_media(
            input_ids, inputs_embeds, pixel_values, media_mask, visual_tokens
        ):
            embeds = {} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
            return super().generate(input_ids, attention_mask=attention_mask, **media, **embeds, **kwargs)
        if visual_tokens is None:
            visual_tokens = self.model.encode_media(pixel_values, media_mask, frame_mask)
        if kwargs.get("assistant_model") is None:
            media = {"visual_tokens": visual_tokens}  # encoded once; an assistant encodes the media itself
        return self._generate_expanded(input_ids, inputs_embeds, attention_mask, visual_tokens, media, kwargs)

    def _generate_expanded(self, input_ids, inputs_embeds, attention_mask, visual, media: dict, kwargs: dict):
        """Generate from a prompt with one placeholder per media item, laid out with K per media item."""
        ids = mask = None
        if input_ids is not None:
            ids, mask, _ = self.model.expand_media_tokens(input_ids, attention_mask, None, visual)
        if inputs_embeds is not None:
            # The visual tokens are put in place here: nothing is left to encode in the prefill.
            inputs_embeds, mask, _, _ = self.model.build_lm_inputs(
                None, attention_mask, visual, inputs_embeds=inputs_embeds
            )
            media = {"inputs_embeds": inputs_embeds}
        out = super().generate(ids, attention_mask=mask, **media, **kwargs)
        if input_ids is None:
            return out  # from `inputs_embeds` alone, the sequences hold the new tokens only
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        factor = sequences.shape[0] // input_ids.shape[0]
        prompt = input_ids.repeat_interleave(factor, dim=0)
        sequences = torch.cat([prompt, sequences[:, ids.shape[1]:]], dim=1)
        if isinstance(out, torch.Tensor):
            return sequences
        out.sequences = sequences
        return out


__all__ = [
    "SimVlgConnector",
    "SimVlgConnectorLayer",
    "SimVlgForConditionalGeneration",
    "SimVlgModel",
    "SimVlgModelOutput",
    "SimVlgOutput",
    "SimVlgPreTrainedModel",
    "SimVlgVisualTokens",
    "expand_media_tokens",
]
