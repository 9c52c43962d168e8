"""SimVLG: frozen vision tower -> Linear -> token-merging connector -> Linear -> frozen causal LM (soft prompt)."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .attention import multihead_attention
from .compat import CACHE_NAME, cache_field, cache_kwargs, output_cache, pop_cache
from .configuration_simvlg import SimVlgConfig
from .towers import as_media_batch, attach_lm_head, build_from_backbones, mark_initialized, stop_at_endofchunk
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
class SimVlgModelOutput(ModelOutput):
    """Outputs of `SimVlgModel`: LM hidden states over the sequence with the visual tokens in place.

    Called with media only (no text), `last_hidden_state` holds the visual tokens (B, M*K, D) in the LM width.
    `attention_mask` is the mask of that expanded sequence.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    attention_mask: torch.Tensor | None = None
    visual_tokens: SimVlgVisualTokens | None = None


@dataclass
@cache_field
class SimVlgOutput(ModelOutput):
    """Outputs of `SimVlgForConditionalGeneration`: the LM loss over the text tokens (visual tokens ignored).
    `logits` and `labels` are those of the expanded sequence (K positions per `<visual>` placeholder)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
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
def _expanded_layout(input_ids: torch.Tensor, media_token_id: int, num_media: torch.Tensor, k: int) -> bool:
    """True when every sample already holds K consecutive placeholders per media item (as `generate` passes them)."""
    is_media = input_ids == media_token_id
    if k == 1 or not bool((num_media > 0).any()):
        return True
    rows = torch.nonzero(num_media > 0).flatten()
    first = is_media[rows].float().argmax(dim=-1)  # first placeholder of each sample with media
    window = first[:, None] + torch.arange(k, device=input_ids.device)
    inside = window < input_ids.shape[1]
    runs = is_media[rows[:, None], window.clamp(max=input_ids.shape[1] - 1)] & inside
    expanded = runs.all(dim=-1)
    if bool(expanded.any()) and not bool(expanded.all()):
        raise ValueError(f"Some samples hold {k} `<visual>` tokens per media item and others one; use one layout.")
    return bool(expanded.all())


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
    b, t = input_ids.shape
    device = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    is_media = input_ids == media_token_id
    placeholder = is_media & (is_media.long().cumsum(-1) <= num_media[:, None])
    reps = torch.where(placeholder, tokens_per_media, 1)  # (B, T)
    lengths = reps.sum(-1)
    new_t = int(lengths.max())
    start = reps.cumsum(-1) - reps  # (B, T) first new position of each token
    if attention_mask is not None and bool((attention_mask[:, 0] == 0).any()):
        start = start + (new_t - lengths)[:, None]  # left padding stays on the left
    flat_reps = reps.flatten()
    src = torch.arange(b * t, device=device).repeat_interleave(flat_reps)  # source token of each new slot
    offset = torch.arange(src.numel(), device=device) - (flat_reps.cumsum(0) - flat_reps).repeat_interleave(flat_reps)
    rows, cols = src // t, start.flatten()[src] + offset
    new_ids = input_ids.new_full((b, new_t), pad_token_id)
    new_ids[rows, cols] = input_ids.flatten()[src]
    new_mask = mask.new_zeros((b, new_t))
    new_mask[rows, cols] = mask.flatten()[src]
    new_labels = None
    if labels is not None:
        new_labels = labels.new_full((b, new_t), -100)
        new_labels[rows, cols] = torch.where(placeholder, -100, labels).flatten()[src]
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

    def _vision_features(self, media: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, MergeState]:
        """media (N, F, C, H, W) -> tokens (N, P, Dv) of the configured layer and their merge state."""
        n, f = media.shape[:2]
        layer = self.config.vision_feature_layer
        temporal = self.temporal_merging is not None and f > 1
        vision_r = resolve_r(self.config.vision_merge_r, self.config.vision_config.num_hidden_layers)
        context = None
        with torch.set_grad_enabled(self._tower_needs_grad(temporal)):
            if temporal:
                features = self.temporal_merging.encode(self.vision_model, media, frame_mask, layer)
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
                out = self.vision_model(pixel_values=media.flatten(0, 1), output_hidden_states=layer != -1, **extra)
                features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
                features = frame_mean(features.reshape(n, f, *features.shape[1:]), frame_mask)
        if context is not None and context.state is not None:
            return features, context.state
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return features, MergeState.start(mask)

    def encode_media(
        self,
        pixel_values: torch.Tensor,
        media_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> SimVlgVisualTokens:
        """pixel_values (B, M, F, C, H, W) -> merged visual tokens in the LM width (padded media/frames skipped)."""
        pixel_values = as_media_batch(pixel_values)
        b, m, f = pixel_values.shape[:3]
        device = pixel_values.device
        media_mask = torch.ones(b, m, dtype=torch.bool, device=device) if media_mask is None else media_mask.bool()
        frame_mask = media_mask[:, :, None].expand(b, m, f) if frame_mask is None else frame_mask.bool()
        frame_mask = frame_mask & media_mask[:, :, None]
        media = pixel_values[media_mask].to(self.vision_model.dtype)  # (n, F, C, H, W)
        features, state = self._vision_features(media, frame_mask[media_mask])  # (n, P, Dv)
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
        return SimVlgVisualTokens(embeds, sizes > 0, sizes, media_mask)

    def expand_media_tokens(self, input_ids, attention_mask, labels, visual: SimVlgVisualTokens):
        """The input with K `<visual>` tokens per media item (see `expand_media_tokens`); already expanded inputs
        are returned unchanged."""
        num_media = visual.media_mask.sum(-1)
        k = visual.tokens_per_media
        if _expanded_layout(input_ids, self.config.media_token_id, num_media, k):
            return input_ids, attention_mask, labels
        pad = self.config.text_config.pad_token_id
        return expand_media_tokens(
            input_ids, attention_mask, labels, self.config.media_token_id, num_media, k, 0 if pad is None else pad
        )

    def _check_media_tokens(self, input_ids: torch.Tensor, visual: SimVlgVisualTokens) -> None:
        have = (input_ids == self.config.media_token_id).sum(-1)
        need = visual.media_mask.sum(-1) * visual.tokens_per_media
        for i in torch.nonzero(have < need).flatten().tolist():
            raise ValueError(
                f"Sample {i} has {int(visual.media_mask[i].sum())} images/videos but too few `<visual>` tokens "
                f"(id {self.config.media_token_id}); put one `<visual>` placeholder per media item (the processor does)."
            )

    def build_lm_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        visual: SimVlgVisualTokens,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token embeddings with the visual tokens in place of the placeholders: (inputs_embeds (B, T', D),
        attention_mask (B, T'), labels (B, T') with -100 on visual tokens)."""
        if visual.media_mask.shape[0] != input_ids.shape[0]:
            visual = visual.repeat_interleave(input_ids.shape[0] // visual.media_mask.shape[0])
        input_ids, attention_mask, labels = self.expand_media_tokens(input_ids, attention_mask, labels, visual)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_media_tokens(input_ids, visual)
        is_media = input_ids == self.config.media_token_id
        num_visual = visual.media_mask.sum(-1, keepdim=True) * visual.tokens_per_media
        slots = is_media & (is_media.long().cumsum(-1) <= num_visual)  # later placeholders are plain text
        embeds = self.get_input_embeddings()(input_ids)
        visual_embeds = visual.embeds[visual.media_mask].to(embeds.dtype)  # (n, K, D), samples then media in order
        embeds = embeds.masked_scatter(slots[..., None], visual_embeds)
        attention_mask = attention_mask.masked_scatter(slots, visual.mask[visual.media_mask].to(attention_mask.dtype))
        if labels is not None:
            labels = labels.masked_fill(slots, -100)
        return embeds, attention_mask, labels

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
        **kwargs,
    ) -> SimVlgModelOutput:
        r"""
        pixel_values: (B, M, F, C, H, W) media of each sample (images have F = 1); (B, C, H, W) means one image each.
        media_mask: (B, M) True for real media; frame_mask: (B, M, F) True for real frames.
        input_ids: one `<visual>` placeholder per media item (as the processor writes them) or K consecutive ones;
            the first placeholders of each sample are replaced by the merged visual tokens of its media.
        visual_tokens: media encoded by an earlier call (`encode_media`); replaces `pixel_values`.
        """
        cache = pop_cache(cache, kwargs)
        if input_ids is None and inputs_embeds is None:
            if pixel_values is None:
                raise ValueError("Pass input_ids (text), pixel_values (media), or both.")
            visual = self.encode_media(pixel_values, media_mask, frame_mask)
            return SimVlgModelOutput(last_hidden_state=visual.embeds.flatten(1, 2), visual_tokens=visual)
        prefill = cache is None or cache.get_seq_length() == 0
        if input_ids is not None and prefill and (visual_tokens is not None or pixel_values is not None):
            if visual_tokens is None:
                visual_tokens = self.encode_media(pixel_values, media_mask, frame_mask)
            inputs_embeds, attention_mask, _ = self.build_lm_inputs(input_ids, attention_mask, visual_tokens)
            input_ids = None
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Positions count real tokens, as `generate` does, so padded and unpadded runs agree.
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)[:, -length:]
        outputs = self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return SimVlgModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            attention_mask=attention_mask,
            visual_tokens=visual_tokens,
        )


class SimVlgForConditionalGeneration(SimVlgPreTrainedModel, GenerationMixin):
    """SimVLG with its LM head: captioning / VQA with the merged visual tokens as a soft prompt; LM loss only."""

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
        **kwargs,
    ) -> SimVlgOutput:
        r"""
        labels: (B, T) next-token targets (-100 = ignored) aligned with `input_ids`, as the processor builds them
            with `return_labels=True`; they are expanded with the visual tokens (which get -100).
        Other arguments as `SimVlgModel.forward`.
        """
        cache = pop_cache(cache, kwargs)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        prefill = cache is None or cache.get_seq_length() == 0
        if input_ids is not None and prefill and (visual_tokens is not None or pixel_values is not None):
            if visual_tokens is None:
                visual_tokens = self.model.encode_media(pixel_values, media_mask, frame_mask)
            inputs_embeds, attention_mask, labels = self.model.build_lm_inputs(
                input_ids, attention_mask, visual_tokens, labels
            )
            input_ids = None
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits, labels, vocab_size=self.config.text_config.vocab_size, num_items_in_batch=num_items_in_batch
            )
        return SimVlgOutput(
            loss=loss,
            logits=logits,
            labels=labels,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            attention_mask=outputs.attention_mask,
            visual_tokens=visual_tokens,
        )

    # ------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        media_mask: torch.BoolTensor | None = None,
        frame_mask: torch.BoolTensor | None = None,
        visual_tokens: SimVlgVisualTokens | None = None,
        **kwargs,
    ):
        """Encode the media once, lay out K placeholders per media item, and decode with the visual prompt in the
        KV cache. Returned sequences start with `input_ids` as given (one placeholder per media item)."""
        if input_ids is None or (pixel_values is None and visual_tokens is None):
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if visual_tokens is None:
            visual_tokens = self.model.encode_media(pixel_values, media_mask, frame_mask)
        ids, mask, _ = self.model.expand_media_tokens(input_ids, attention_mask, None, visual_tokens)
        out = super().generate(input_ids=ids, attention_mask=mask, visual_tokens=visual_tokens, **kwargs)
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
