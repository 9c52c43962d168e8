"""CosMo: vision tower -> Perceiver resampler -> split causal LM with gated cross-attention + contrastive heads."""

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils.generic import can_return_tuple

from .compat import (
    CACHE_NAME,
    NestedOutput,
    accepts_old_cache_name,
    cache_field,
    cache_kwargs,
    output_cache,
)
from .configuration_cosmo import CosmoConfig
from .contrastive import ContrastiveProjection, LogitScale, contrastive_logits, symmetric_contrastive_loss
from .cross_attention import GatedCrossAttentionBlock
from .lm_split import split_language_model
from .media_masks import media_index_from_ids, media_index_from_mask, media_token_mask
from .pooling import AttentionPooling
from .position_tables import init_sincos_positions, init_tower_sincos_positions
from .resampler import PerceiverResampler
from .towers import (
    as_media_batch,
    attach_lm_head,
    build_from_backbones,
    given_output_flags,
    mark_initialized,
    stop_at_endofchunk,
)
from .visual_context import VisualContext


@dataclass
class CosmoVisualCache:
    """Media encoded once per `generate` call: resampled latents and the cross-attention keys/values per layer.

    latents: (B, M, L, Dv) latents the LM attends to; contrastive_latents: (B, M, Dv); media_mask: (B, M) bool.
    """

    latents: torch.Tensor
    contrastive_latents: torch.Tensor | None
    media_mask: torch.Tensor
    kv: dict = field(default_factory=dict)
    vision_outputs: BaseModelOutput | None = None


@dataclass
@cache_field
class CosmoModelOutput(NestedOutput):
    """Outputs of `CosmoModel`: LM hidden states plus the contrastive embeddings when they were computed.

    Called with media only (no text), `last_hidden_state` holds the resampled latents (B, M*(L+1), Dv) and
    `pooler_output` the image embeddings, so the model serves as an image feature extractor. `image_outputs`
    (when media were encoded by this call): resampled latents, image embeddings and the vision tower's hidden states
    and attentions, as `get_image_features` returns them.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    contrastive_loss: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    visual_cache: CosmoVisualCache | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
@cache_field
class CosmoOutput(NestedOutput):
    """Outputs of `CosmoForConditionalGeneration`: `loss = lm_loss + contrastive_loss_weight * contrastive_loss`."""

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    visual_cache: CosmoVisualCache | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


def _is_pair_batch(pixel_values: torch.Tensor, media_mask: torch.Tensor | None) -> bool:
    """True when every sample holds exactly one image or video (the batches the contrastive loss uses)."""
    if media_mask is None:
        return as_media_batch(pixel_values).shape[1] == 1
    return bool((media_mask.sum(-1) == 1).all())


class CosmoPreTrainedModel(PreTrainedModel):
    config_class = CosmoConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _can_compile_fullgraph = False
    _no_split_modules = ["MultimodalDecoderLayer", "PerceiverLayer"]
    _skip_keys_device_placement = [CACHE_NAME]

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, PerceiverResampler):
            init.normal_(module.latents, std=std)
            init.zeros_(module.frame_embeddings)
            if module.media_position_embeddings is not None:
                init.zeros_(module.media_position_embeddings)
            if module.spatial_embeddings is not None and self.config.sincos_position_init:
                init_sincos_positions(module.spatial_embeddings)
            elif module.spatial_embeddings is not None:
                init.normal_(module.spatial_embeddings, std=std)
        elif isinstance(module, GatedCrossAttentionBlock):
            init.constant_(module.attn_gate, self.config.cross_attention_gate_init)
            init.constant_(module.ff_gate, self.config.cross_attention_gate_init)
        elif isinstance(module, AttentionPooling):
            init.normal_(module.query, std=std)
        elif isinstance(module, LogitScale):
            init.constant_(module.value, self.config.logit_scale_init_value)

    @classmethod
    def from_backbones(cls, vision: str, text: str, **config_kwargs):
        """Build the model around pretrained towers given by local path or Hub id (`vision` may be a dual encoder
        such as CLIP or SigLIP: its vision tower is used). Extra keyword arguments go to the config."""
        return build_from_backbones(cls, vision, text, **config_kwargs)


class CosmoModel(CosmoPreTrainedModel):
    """Vision tower, resampler, split LM (no LM head) and the contrastive heads."""

    def __init__(self, config: CosmoConfig, vision_model: PreTrainedModel | None = None, causal_lm=None):
        super().__init__(config)
        if vision_model is None:
            vision_model = AutoModel.from_config(config.vision_config)
            if config.sincos_position_init:
                init_tower_sincos_positions(vision_model)
        else:
            mark_initialized(vision_model)
        language_model = AutoModel.from_config(config.text_config) if causal_lm is None else causal_lm.base_model
        if causal_lm is not None:
            mark_initialized(language_model)
        self.vision_model = vision_model
        self.language_model = language_model
        vision_dim = config.vision_config.hidden_size
        text_dim = config.text_config.hidden_size
        self.resampler = PerceiverResampler(
            vision_dim,
            config.num_latents,
            config.resampler_depth,
            config.resampler_heads,
            config.resampler_head_dim,
            config.resampler_ff_mult,
            config.max_num_frames,
            config.max_num_media,
            num_extra_latents=1,
            extra_latents_as_keys=config.resampler_extra_latents_as_keys,
            num_spatial_tokens=config.resampler_spatial_tokens,
        )
        split_language_model(
            self.language_model,
            config,
            lambda idx: GatedCrossAttentionBlock(
                text_dim,
                vision_dim,
                config.cross_attention_heads,
                config.cross_attention_head_dim,
                config.cross_attention_ff_mult,
                config.cross_attention_compress_ratio,
                layer_idx=idx,
                gate_init=config.cross_attention_gate_init,
            ),
        )
        self.text_pooler = AttentionPooling(text_dim)
        self.text_projection = ContrastiveProjection(text_dim, config.contrastive_dim)
        self.image_projection = ContrastiveProjection(vision_dim, config.contrastive_dim)
        self.logit_scale = LogitScale(config.logit_scale_init_value, config.logit_scale_max)
        self.post_init()
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Freeze the towers as the config says; cross-attention blocks inside the LM always stay trainable."""
        self.vision_model.requires_grad_(not self.config.freeze_vision_tower)
        for name, param in self.language_model.named_parameters():
            param.requires_grad_(not self.config.freeze_language_model or ".cross_attention." in name)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ----------------------------------------------------------------------------------------------- media
    def _vision_features(self, frames: torch.Tensor, output_hidden_states=None, output_attentions=None):
        """(N, C, H, W) -> ((N, P, Dv) tokens of the configured vision layer (CLS dropped with strategy "default"),
        the tower's hidden states and attentions as requested)."""
        layer = self.config.vision_feature_layer
        tower_config = self.vision_model.config
        want_hidden = tower_config.output_hidden_states if output_hidden_states is None else output_hidden_states
        want_attentions = tower_config.output_attentions if output_attentions is None else output_attentions
        train_tower = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_model.parameters())
        with torch.set_grad_enabled(train_tower):
            out = self.vision_model(
                pixel_values=frames, output_hidden_states=bool(want_hidden) or layer != -1,
                output_attentions=bool(want_attentions), return_dict=True,
            )
        features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        features = features[:, 1:] if self.config.vision_feature_select_strategy == "default" else features
        tower = BaseModelOutput(
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states if want_hidden else None,
            attentions=out.attentions if want_attentions else None,
        )
        return features, tower

    def encode_media(
        self,
        pixel_values: torch.Tensor,
        media_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> CosmoVisualCache:
        """pixel_values (B, M, F, C, H, W) -> resampled latents of the real media (padded media/frames skipped).
        Without masks every media item and frame is real: no boolean indexing (shapes stay static, e.g. for export)."""
        pixel_values = as_media_batch(pixel_values)
        if media_mask is None and frame_mask is None:
            return self._encode_dense(pixel_values, output_hidden_states, output_attentions)
        b, m, f = pixel_values.shape[:3]
        device = pixel_values.device
        media_mask = torch.ones(b, m, dtype=torch.bool, device=device) if media_mask is None else media_mask.bool()
        frame_mask = media_mask[:, :, None].expand(b, m, f) if frame_mask is None else frame_mask.bool()
        frame_mask = frame_mask & media_mask[:, :, None]
        dtype = self.vision_model.dtype
        features, tower = self._vision_features(
            pixel_values[frame_mask].to(dtype), output_hidden_states, output_attentions
        )  # (n_frames, P, Dv)
        p, dv = features.shape[1:]
        per_frame = features.new_zeros(b, m, f, p, dv)
        per_frame[frame_mask] = features
        positions = torch.arange(m, device=device).expand(b, m)[media_mask]  # (n_media,)
        latents = self.resampler(per_frame[media_mask], frame_mask[media_mask], positions)  # (n_media, L+1, Dv)
        all_latents = latents.new_zeros(b, m, *latents.shape[1:])
        all_latents[media_mask] = latents
        return self._visual_cache(all_latents, media_mask, tower)

    def _encode_dense(self, pixel_values: torch.Tensor, output_hidden_states=None, output_attentions=None):
        b, m, f = pixel_values.shape[:3]
        frames = pixel_values.flatten(0, 2).to(self.vision_model.dtype)  # (B*M*F, C, H, W)
        features, tower = self._vision_features(frames, output_hidden_states, output_attentions)  # (B*M*F, P, Dv)
        features = features.reshape(b * m, f, *features.shape[1:])  # (B*M, F, P, Dv)
        positions = torch.arange(m, device=pixel_values.device).repeat(b)  # (B*M,)
        latents = self.resampler(features, None, positions)  # (B*M, L+1, Dv)
        media_mask = torch.ones(b, m, dtype=torch.bool, device=pixel_values.device)
        return self._visual_cache(latents.reshape(b, m, *latents.shape[1:]), media_mask, tower)

    def _visual_cache(self, all_latents: torch.Tensor, media_mask: torch.Tensor, tower) -> CosmoVisualCache:
        # all_latents: (B, M, L+1, Dv): the LM's latents, then the contrastive one
        num_latents = self.config.num_latents
        return CosmoVisualCache(
            all_latents[:, :, :num_latents], all_latents[:, :, num_latents], media_mask, vision_outputs=tower
        )

    def _image_embeds(self, visual: CosmoVisualCache) -> torch.Tensor:
        """Mean of the contrastive latent over each sample's real media -> (B, contrastive_dim), L2-normalised."""
        weights = visual.media_mask.to(visual.contrastive_latents.dtype)[:, :, None]  # (B, M, 1)
        pooled = (visual.contrastive_latents * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, Dv)
        return self.image_projection(pooled)

    def _text_embeds(self, split_hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.text_projection(self.text_pooler(split_hidden, attention_mask))

    def _image_outputs(self, visual: CosmoVisualCache) -> BaseModelOutputWithPooling:
        """Resampled latents (B, M*(L+1), Dv), image embeddings (B, contrastive_dim), vision tower states."""
        latents = torch.cat([visual.latents, visual.contrastive_latents[:, :, None]], dim=2)  # (B, M, L+1, Dv)
        tower = visual.vision_outputs
        return BaseModelOutputWithPooling(
            last_hidden_state=latents.flatten(1, 2),
            pooler_output=self._image_embeds(visual),
            hidden_states=None if tower is None else tower.hidden_states,
            attentions=None if tower is None else tower.attentions,
        )

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
        """`pooler_output`: normalised image (or video) embeddings (B, contrastive_dim) from the contrastive latent;
        `last_hidden_state`: the resampled latents (B, M*(L+1), Dv); the vision tower's hidden states/attentions."""
        visual = self.encode_media(pixel_values, media_mask, frame_mask, output_hidden_states, output_attentions)
        return self._image_outputs(visual)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`pooler_output`: normalised text embeddings (B, contrastive_dim); `last_hidden_state`: output of the
        text-only lower layers (B, T, D), the only layers run; their hidden states/attentions when requested."""
        context = VisualContext(stop_at_split=True)
        flags = given_output_flags(output_hidden_states, output_attentions)
        out = self.language_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, visual_context=context,
            return_dict=True, **flags,
        )
        split_hidden = context.split_hidden  # (B, T, D)
        hidden_states = out.hidden_states
        if hidden_states is not None:
            # Layers above the split passed their input through; the LM's last entry is its final-normed output.
            hidden_states = (*hidden_states[:-1], split_hidden)
        return BaseModelOutputWithPooling(
            last_hidden_state=split_hidden,
            pooler_output=self._text_embeds(split_hidden, attention_mask),
            hidden_states=hidden_states,
            attentions=out.attentions,
        )

    def _media_only_output(self, visual: CosmoVisualCache) -> CosmoModelOutput:
        image_outputs = self._image_outputs(visual)
        return CosmoModelOutput(
            last_hidden_state=image_outputs.last_hidden_state, pooler_output=image_outputs.pooler_output,
            image_embeds=image_outputs.pooler_output, visual_cache=visual, image_outputs=image_outputs,
        )

    # ---------------------------------------------------------------------------------------------- forward
    def _check_media_tokens(self, is_media: torch.Tensor, media_mask: torch.Tensor) -> None:
        tokens = is_media.sum(-1)
        media = media_mask.sum(-1)
        for i in torch.nonzero(tokens != media).flatten().tolist():
            raise ValueError(
                f"Sample {i} has {int(tokens[i])} media tokens (id {self.config.media_token_id}) but "
                f"{int(media[i])} images/videos; put one `<visual>` placeholder per media item (the processor does)."
            )

    def media_token_mask(self, input_ids=None, inputs_embeds=None) -> torch.Tensor:
        """(B, T) bool, True at the `<visual>` placeholders of `input_ids`, or of `inputs_embeds` without ids."""
        return media_token_mask(self.config.media_token_id, input_ids, inputs_embeds, self.get_input_embeddings())

    @can_return_tuple
    @accepts_old_cache_name
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
        visual_cache: CosmoVisualCache | None = None,
        media_index: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CosmoModelOutput:
        r"""
        pixel_values: (B, M, F, C, H, W) media of each sample (images have F = 1); (B, C, H, W) means one image each.
        media_mask: (B, M) True for real media; frame_mask: (B, M, F) True for real frames.
        visual_cache: media encoded by an earlier call (used while generating); replaces `pixel_values`.
        media_index: (B, T) latest media index per token (by default counted from the `<visual>` placeholders of
            `input_ids`, or of `inputs_embeds`; pass it when the tokens are a continuation of earlier ones).
        return_loss: compute the contrastive loss (needs exactly one media item per sample).
        """
        cache = past_key_values if cache is None else cache  # the name before transformers 5.24
        flags = given_output_flags(output_hidden_states, output_attentions)
        if input_ids is None and inputs_embeds is None:
            if pixel_values is None:
                raise ValueError("Pass input_ids (text), pixel_values (media), or both.")
            visual = self.encode_media(pixel_values, media_mask, frame_mask, output_hidden_states, output_attentions)
            return self._media_only_output(visual)
        new_media = visual_cache is None and pixel_values is not None
        # Only a prompt with freshly encoded media is checked (data-dependent code never runs on decoding steps).
        prefill = new_media and (cache is None or cache.get_seq_length() == 0)
        if new_media:
            visual_cache = self.encode_media(
                pixel_values, media_mask, frame_mask, output_hidden_states, output_attentions
            )
        if visual_cache is not None and (media_index is None or prefill):
            is_media = self.media_token_mask(input_ids, inputs_embeds)  # (B, T)
            if prefill:
                self._check_media_tokens(is_media, visual_cache.media_mask)
            media_index = media_index_from_mask(is_media) if media_index is None else media_index  # (B, T)
        pair_batch = (
            (bool(return_loss) or prefill) and visual_cache is not None
            and bool((visual_cache.media_mask.sum(-1) == 1).all())
        )
        if return_loss and not pair_batch:
            raise ValueError(
                "The contrastive loss needs exactly one image or video per sample (a pair batch); "
                "call with return_loss=False for interleaved documents."
            )
        want_embeds = bool(return_loss) or pair_batch
        context = VisualContext(
            latents=None if visual_cache is None else visual_cache.latents,
            media_mask=None if visual_cache is None else visual_cache.media_mask,
            media_index=media_index,
            # K/V of the latents are reused across decoding steps; never under autograd (checkpoint replays).
            kv_cache=visual_cache.kv if visual_cache is not None and not torch.is_grad_enabled() else None,
        )
        outputs = self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            visual_context=context,
            return_dict=True,
            **flags,
            **kwargs,
        )
        image_outputs = self._image_outputs(visual_cache) if new_media else None
        result = CosmoModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            visual_cache=visual_cache,
            image_outputs=image_outputs,
        )
        if want_embeds:
            result.image_embeds = (
                self._image_embeds(visual_cache) if image_outputs is None else image_outputs.pooler_output
            )
            result.text_embeds = self._text_embeds(context.split_hidden, attention_mask)
            result.logit_scale = self.logit_scale()
            result.logits_per_image, result.logits_per_text = contrastive_logits(
                result.image_embeds, result.text_embeds, result.logit_scale
            )
            if return_loss:
                result.contrastive_loss = symmetric_contrastive_loss(result.logits_per_image, result.logits_per_text)
        return result


class CosmoForConditionalGeneration(CosmoPreTrainedModel, GenerationMixin):
    """CosMo with its LM head: captioning, VQA, few-shot interleaved generation, plus the contrastive loss."""

    def __init__(self, config: CosmoConfig, vision_model: PreTrainedModel | None = None, causal_lm=None):
        super().__init__(config)
        self.model = CosmoModel(config, vision_model=vision_model, causal_lm=causal_lm)
        attach_lm_head(self, self.model.language_model, config, causal_lm)
        self.post_init()
        self._shard_lm_head_with_embeddings()
        self.model.apply_freezing()
        self.lm_head.requires_grad_(not config.freeze_language_model)
        stop_at_endofchunk(self)

    def _shard_lm_head_with_embeddings(self) -> None:
        """The LM head is sharded as the wrapped LM's own causal-LM class shards it, whenever the embedding is
        (a head tied to a sharded embedding must be sharded too)."""
        names = {module: name for name, module in self.named_modules()}
        if names[self.get_input_embeddings()] not in self.tp_plan:
            return
        causal_cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(self.config.text_config), None)
        head_plan = {k: v for k, v in (getattr(causal_cls, "_tp_plan", None) or {}).items() if k == "lm_head"}
        if head_plan:
            self._tp_plan = {**self._tp_plan, **head_plan}
        else:
            self._tp_plan = {k: v for k, v in self._tp_plan.items() if k != names[self.get_input_embeddings()]}

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_image_features(self, pixel_values, media_mask=None, frame_mask=None, **kwargs):
        return self.model.get_image_features(pixel_values, media_mask, frame_mask, **kwargs)

    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        return self.model.get_text_features(input_ids, attention_mask, **kwargs)

    @can_return_tuple
    @accepts_old_cache_name
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
        visual_cache: CosmoVisualCache | None = None,
        media_index: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CosmoOutput:
        r"""
        labels: (B, T) next-token targets (-100 = ignored), as the processor builds them with `return_labels=True`.
        shift_labels: (B, T) targets already aligned with the logits (replace `labels` in the LM loss).
        return_loss: add the contrastive term; by default it is added when `labels` are given on a pair batch
            (exactly one image or video per sample), never on interleaved documents.
        Other arguments as `CosmoModel.forward`.
        """
        cache = past_key_values if cache is None else cache  # the name before transformers 5.24
        if return_loss is None:
            return_loss = labels is not None and pixel_values is not None and _is_pair_batch(pixel_values, media_mask)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            media_mask=media_mask,
            frame_mask=frame_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            visual_cache=visual_cache,
            media_index=media_index,
            return_loss=return_loss,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        lm_loss = None
        if labels is not None or shift_labels is not None:
            lm_loss = self.loss_function(
                logits, labels, vocab_size=self.config.text_config.vocab_size, num_items_in_batch=num_items_in_batch,
                shift_labels=shift_labels,
            )
        loss = lm_loss
        if outputs.contrastive_loss is not None:
            weighted = self.config.contrastive_loss_weight * outputs.contrastive_loss
            loss = weighted if loss is None else loss + weighted
        return CosmoOutput(
            loss=loss,
            lm_loss=lm_loss,
            contrastive_loss=outputs.contrastive_loss,
            logits=logits,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_embeds=outputs.image_embeds,
            text_embeds=outputs.text_embeds,
            logits_per_image=outputs.logits_per_image,
            logits_per_text=outputs.logits_per_text,
            logit_scale=outputs.logit_scale,
            visual_cache=outputs.visual_cache,
            image_outputs=outputs.image_outputs,
        )

    # ------------------------------------------------------------------------------------------- generation
    def _generation_media_index(self, input_ids, inputs_embeds, attention_mask) -> torch.Tensor:
        """(B, T) media index of every token of `input_ids`. When generating from `inputs_embeds` alone, `input_ids`
        holds only the new tokens: the media of the prompt (the embeddings before them) are counted first."""
        index = media_index_from_ids(input_ids, self.config.media_token_id)  # (B, T)
        full_length = attention_mask.shape[-1] if attention_mask is not None and attention_mask.dim() == 2 else 0
        missing = full_length - input_ids.shape[1]  # prompt positions absent from input_ids
        if inputs_embeds is not None and missing > 0:
            prompt = self.model.media_token_mask(inputs_embeds=inputs_embeds[:, :missing])  # (B, missing)
            index = index + prompt.long().sum(-1, keepdim=True)
        return index

    def prepare_inputs_for_generation(
        self,
        input_ids,
        attention_mask=None,
        inputs_embeds=None,
        pixel_values=None,
        media_mask=None,
        frame_mask=None,
        visual_cache=None,
        **kwargs,
    ):
        # The media index needs the whole sequence; the LM inputs are only the new tokens.
        media_index = self._generation_media_index(input_ids, inputs_embeds, attention_mask)
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        step_ids = model_inputs.get("input_ids")
        if step_ids is not None:
            model_inputs["media_index"] = media_index[:, -step_ids.shape[1] :]
        if visual_cache is not None:
            model_inputs["visual_cache"] = visual_cache
        else:
            model_inputs.update(pixel_values=pixel_values, media_mask=media_mask, frame_mask=frame_mask)
        model_inputs["return_loss"] = False
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        # Media are encoded once: later steps reuse the latents and their cross-attention keys/values.
        if getattr(outputs, "visual_cache", None) is not None:
            model_kwargs["visual_cache"] = outputs.visual_cache
        return model_kwargs


class CosmoMediaEncoder(nn.Module):
    """Vision tower + resampler as a tensor-only module (e.g. for `torch.export`): every media item and frame real.

    forward: pixel_values (B, M, F, C, H, W) -> latents (B, M, L, Dv), contrastive latents (B, M, Dv).
    """

    def __init__(self, model: "CosmoModel | CosmoForConditionalGeneration"):
        super().__init__()
        self.model = getattr(model, "model", model)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.model.encode_media(pixel_values)
        return visual.latents, visual.contrastive_latents


class CosmoDecodeStep(nn.Module):
    """One decoding step of the LM with cross-attention, tensors in and out (e.g. for `torch.export`).

    forward(input_ids (B, S), attention_mask (B, P+S), media_index (B, S), latents (B, M, L, Dv), media_mask (B, M),
    past_keys, past_values (one (B, H, P, d) tensor per layer)) -> logits of the last token (B, V), the keys and
    values of every layer after the step ((B, H, P+S, d) each).
    """

    def __init__(self, model: CosmoForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, media_index, latents, media_mask, past_keys, past_values):
        cache = DynamicCache(ddp_cache_data=list(zip(past_keys, past_values)))
        past = past_keys[0].shape[2]
        position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        visual = CosmoVisualCache(latents, None, media_mask.bool())
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            use_cache=True, visual_cache=visual, media_index=media_index, return_loss=False, logits_to_keep=1,
        )
        cache = output_cache(out)
        keys = tuple(layer.keys for layer in cache.layers)
        values = tuple(layer.values for layer in cache.layers)
        return out.logits[:, -1], keys, values


def contrastive_text_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config) -> tuple:
    """Rewrite plain tokenised texts into the training-pair layout `<s><visual>{text}<|endofchunk|></s>`
    (right padded), so any tokenizer output gives the same text embedding as the training captions.
    Rows already in that layout are kept as they are."""
    text = config.text_config
    bos, eos = text.bos_token_id, text.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    pad = text.pad_token_id if text.pad_token_id is not None else eos
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    rows = []
    for ids, keep in zip(input_ids.tolist(), mask.tolist()):
        tokens = [t for t, k in zip(ids, keep) if k]
        if tokens[:1] == [bos]:
            tokens = tokens[1:]
        if tokens[:1] == [config.media_token_id]:
            tokens = tokens[1:]
        if tokens[-1:] == [eos]:
            tokens = tokens[:-1]
        if tokens[-1:] == [config.endofchunk_token_id]:
            tokens = tokens[:-1]
        rows.append([bos, config.media_token_id, *tokens, config.endofchunk_token_id, eos])
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], device=input_ids.device)
    new_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], device=input_ids.device)
    return ids, new_mask


@dataclass
class CosmoZeroShotOutput(NestedOutput):
    """CLIP-style outputs: `logits_per_image` (N_images, N_texts), the normalised embeddings, and the outputs of
    `get_text_features` / `get_image_features` (`text_outputs`, `vision_outputs`)."""

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    text_outputs: BaseModelOutputWithPooling | None = None
    vision_outputs: BaseModelOutputWithPooling | None = None


class CosmoForZeroShotImageClassification(CosmoPreTrainedModel):
    """The contrastive heads of CosMo as a dual encoder: any number of images against any number of texts
    (what transformers' zero-shot-image-classification pipeline calls). Loads CosMo checkpoints."""

    def __init__(self, config: CosmoConfig):
        super().__init__(config)
        self.model = CosmoModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_image_features(self, pixel_values, media_mask=None, frame_mask=None, **kwargs):
        return self.model.get_image_features(pixel_values, media_mask, frame_mask, **kwargs)

    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        """Texts are first rewritten into the training-pair layout (see `contrastive_text_ids`)."""
        return self.model.get_text_features(*contrastive_text_ids(input_ids, attention_mask, self.config), **kwargs)

    @can_return_tuple
    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, media_mask=None, frame_mask=None,
                return_loss=None, output_hidden_states=None, output_attentions=None, **kwargs) -> CosmoZeroShotOutput:
        """`return_loss`: the symmetric contrastive loss, image i matching text i."""
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions,
                 "return_dict": True}
        out = CosmoZeroShotOutput()
        if input_ids is not None:
            out.text_outputs = self.get_text_features(input_ids, attention_mask, **flags)
            out.text_embeds = out.text_outputs.pooler_output
        if pixel_values is not None:
            out.vision_outputs = self.get_image_features(pixel_values, media_mask, frame_mask, **flags)
            out.image_embeds = out.vision_outputs.pooler_output
        if out.image_embeds is not None and out.text_embeds is not None:
            out.logits_per_image, out.logits_per_text = contrastive_logits(
                out.image_embeds, out.text_embeds, self.model.logit_scale()
            )
            if return_loss:
                out.loss = symmetric_contrastive_loss(out.logits_per_image, out.logits_per_text)
        return out


def trainable_parameters(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, trainable / total) parameter counts; works on meta-device models."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total, trainable / max(total, 1)


__all__ = [
    "CosmoForConditionalGeneration",
    "CosmoModel",
    "CosmoModelOutput",
    "CosmoOutput",
    "CosmoPreTrainedModel",
    "CosmoForZeroShotImageClassification",
    "CosmoDecodeStep",
    "CosmoMediaEncoder",
    "CosmoVisualCache",
    "CosmoZeroShotOutput",
    "trainable_parameters",
]
