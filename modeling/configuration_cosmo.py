"""CosMo configuration: a vision tower, a Perceiver resampler and a causal LM split in two."""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .tower_attention import keep_tower_attention


@strict
class CosmoConfig(PreTrainedConfig):
    r"""
    Configuration of a CosMo model (contrastive-streamlined multimodal model).

    The vision tower and the language model are any transformers vision model / decoder-only LM, described by
    `vision_config` and `text_config`. The lower `unimodal_depth` decoder layers stay text-only (their output gives
    the text embedding of the contrastive loss); a tanh-gated cross-attention block to the resampled visual latents
    runs before decoder layer `i` when `i >= unimodal_depth` and `(i - unimodal_depth) % cross_attention_interval == 0`.

    Args:
        vision_config: sub-config of the vision tower (default: CLIP ViT-L/14 shapes).
        text_config: sub-config of the causal LM (default: OPT-IML-1.3B shapes).
        unimodal_depth: number of text-only lower decoder layers (default: half of the LM). 0 puts a cross-attention
            block before the first layer (Flamingo's layout); the text embedding then pools the token embeddings.
        cross_attention_interval: insert a cross-attention block every this many upper layers.
        cross_attention_compress_ratio: divides the inner widths of the cross-attention blocks (bottleneck).
        cross_attention_heads / cross_attention_head_dim / cross_attention_ff_mult: cross-attention block shape.
        cross_attention_gate_init: initial value of the tanh gates (0: the LM starts exactly as the text model, as
            Flamingo; an LM trained from scratch has nothing to preserve and learns faster with open gates).
        num_latents: learned latents of the resampler (one more is appended for the contrastive image embedding).
        resampler_depth / resampler_heads / resampler_head_dim / resampler_ff_mult: Perceiver resampler shape.
        max_num_frames: frames per video the temporal embeddings cover.
        max_num_media: media per sample the media-position embeddings cover (0 disables them).
        vision_feature_layer: hidden-state index of the vision tower fed to the resampler.
        vision_feature_select_strategy: `"full"` feeds every token of that layer (CLS included) to the resampler,
            `"default"` drops the first (CLS) token, as transformers' LLaVA and open_clip-based Flamingos do.
        resampler_extra_latents_as_keys: the learned latents also attend to the extra (contrastive) latent, as in the
            CosMo reference; False keeps them independent of it (exact OpenFlamingo conversions, which have none).
        resampler_spatial_tokens: learned spatial embeddings for this many vision tokens per frame, added before
            the resampler (0: none, as the papers; towers trained from scratch need them to keep object positions).
        sincos_position_init: initialise the learned patch positions of a vision tower built from its config, and the
            resampler's spatial embeddings, with 2D sin-cos tables (MAE) instead of random values (pretrained towers
            keep theirs). Tiny towers trained from scratch need it to tell top from bottom.
        contrastive_dim: width of the joint image-text embedding space.
        contrastive_loss_weight: weight `w` of the contrastive term in `loss = lm_loss + w * contrastive_loss`.
        logit_scale_init_value: initial log logit scale (0.2 as the CosMo reference; CLIP uses 2.6592).
        logit_scale_max: the learnable log logit scale is clamped to this value (ln 100, as open_clip).
        media_token_id / endofchunk_token_id: ids of `<visual>` and `<|endofchunk|>` in the tokenizer.
        freeze_vision_tower / freeze_language_model: keep those towers frozen (CosMo trains neither).
    """

    model_type = "cosmo"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 224,
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="opt",
            init_kwargs={
                "hidden_size": 2048,
                "ffn_dim": 8192,
                "num_hidden_layers": 24,
                "num_attention_heads": 32,
                "word_embed_proj_dim": 2048,
                "vocab_size": 50272,
            },
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    unimodal_depth: int | None = None
    cross_attention_interval: int = 1
    cross_attention_compress_ratio: int = 1
    cross_attention_heads: int = 8
    cross_attention_head_dim: int = 64
    cross_attention_ff_mult: int = 4
    cross_attention_gate_init: float = 0.0
    num_latents: int = 64
    resampler_depth: int = 6
    resampler_heads: int = 8
    resampler_head_dim: int = 64
    resampler_ff_mult: int = 4
    max_num_frames: int = 8
    max_num_media: int = 32
    vision_feature_layer: int = -1
    vision_feature_select_strategy: str = "full"
    resampler_extra_latents_as_keys: bool = True
    resampler_spatial_tokens: int = 0
    sincos_position_init: bool = False
    contrastive_dim: int = 512
    contrastive_loss_weight: float = 1.0
    logit_scale_init_value: float = 0.2
    logit_scale_max: float = math.log(100.0)
    media_token_id: int | None = None
    endofchunk_token_id: int | None = None
    freeze_vision_tower: bool = True
    freeze_language_model: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        with keep_tower_attention(self, kwargs):
            super().__post_init__(**kwargs)
        # Tying belongs to the LM; mirror it so the composite model ties its LM head like the LM does.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        num_layers = self.text_config.num_hidden_layers
        if self.unimodal_depth is None:
            self.unimodal_depth = num_layers // 2
        self._check_ranges(num_layers)

    def _check_ranges(self, num_layers: int) -> None:
        if not 0 <= self.unimodal_depth < num_layers:
            raise ValueError(
                f"unimodal_depth={self.unimodal_depth} must be in [0, {num_layers}) for a {num_layers}-layer LM; "
                "set it to the number of text-only lower layers (CosMo uses half the depth)."
            )
        if self.vision_feature_select_strategy not in ("full", "default"):
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} must be 'full' (all tokens) "
                "or 'default' (drop the CLS token)."
            )
        for name in ("cross_attention_interval", "cross_attention_compress_ratio", "num_latents", "max_num_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        ratio = self.cross_attention_compress_ratio
        if self.cross_attention_heads % ratio and self.cross_attention_head_dim % ratio:
            raise ValueError(
                f"cross_attention_compress_ratio={ratio} must divide cross_attention_heads "
                f"({self.cross_attention_heads}) or cross_attention_head_dim ({self.cross_attention_head_dim})."
            )

    @property
    def cross_attention_layer_ids(self) -> list[int]:
        """Indices of the decoder layers that get a gated cross-attention block before them."""
        n = self.text_config.num_hidden_layers
        return [i for i in range(self.unimodal_depth, n) if (i - self.unimodal_depth) % self.cross_attention_interval == 0]


__all__ = ["CosmoConfig"]
