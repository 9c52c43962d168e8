"""SimVLG configuration: a frozen vision tower, a token-merging connector and a frozen causal LM."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .tower_attention import keep_tower_attention

from .token_merging import resolve_r


@strict
class SimVlgConfig(PreTrainedConfig):
    r"""
    Configuration of a SimVLG model (vision-language generation through gradual visual token merging).

    Media go through the vision tower, a Linear to the connector width, a stack of BERT-style (post-norm)
    Transformer layers that each merge `merge_r` tokens after self-attention (ToMe bipartite soft matching,
    size-weighted, proportional attention), and a Linear to the LM width. The merged tokens replace the `<visual>`
    placeholder of their media in the LM input (a soft prompt); the loss is the LM loss only.

    Args:
        vision_config: sub-config of the vision tower (default: CLIP ViT-L/14 shapes, 257 tokens).
        text_config: sub-config of the causal LM (default: OPT-2.7B shapes).
        connector_hidden_size / connector_num_layers / connector_num_heads / connector_intermediate_size: shape of the
            BERT-like connector (default: BERT-base).
        connector_dropout: dropout of the connector's attention output and feed-forward.
        connector_layer_norm_eps: epsilon of the connector's LayerNorms.
        merge_r: tokens merged per connector layer: an int (every layer) or a per-layer list. Read at every forward,
            so a training callback may change it (`config.merge_r`); 257 tokens with r=19 over 12 layers give 29.
        merge_proportional_attention: add log(token size) to the connector's attention logits.
        merge_protect_cls: never merge the first token (default: when the vision tower has a class token).
        vision_merge_r: tokens merged per vision-tower layer (0 = none), an int or a per-layer list.
        temporal_merging: attention across frames inside the vision blocks (gate initialised to 0) for video.
        temporal_qk_dim / temporal_num_heads: shape of that temporal attention.
        vision_feature_layer: hidden-state index of the vision tower fed to the connector.
        media_token_id / endofchunk_token_id: ids of `<visual>` and `<|endofchunk|>` in the tokenizer.
        freeze_vision_tower / freeze_language_model: keep those towers frozen (SimVLG trains neither).
    """

    model_type = "simvlg"
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
                "hidden_size": 2560,
                "ffn_dim": 10240,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "word_embed_proj_dim": 2560,
                "vocab_size": 50272,
            },
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    connector_hidden_size: int = 768
    connector_num_layers: int = 12
    connector_num_heads: int = 12
    connector_intermediate_size: int = 3072
    connector_dropout: float = 0.1
    connector_layer_norm_eps: float = 1e-12
    merge_r: int | list[int] = 19
    merge_proportional_attention: bool = True
    merge_protect_cls: bool | None = None
    vision_merge_r: int | list[int] = 0
    temporal_merging: bool = False
    temporal_qk_dim: int = 256
    temporal_num_heads: int = 8
    vision_feature_layer: int = -1
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
        self._check()

    def _check(self) -> None:
        if self.connector_hidden_size % self.connector_num_heads:
            raise ValueError(
                f"connector_hidden_size={self.connector_hidden_size} must be divisible by "
                f"connector_num_heads={self.connector_num_heads}."
            )
        resolve_r(self.merge_r, self.connector_num_layers)
        resolve_r(self.vision_merge_r, self.vision_config.num_hidden_layers)
        vision_merging = any(resolve_r(self.vision_merge_r, self.vision_config.num_hidden_layers))
        if vision_merging and self.temporal_merging:
            raise ValueError(
                "vision_merge_r > 0 with temporal_merging: frames merged differently lose their shared spatial "
                "positions; merge in the connector (merge_r) instead."
            )
        if vision_merging and self.vision_feature_layer != -1:
            raise ValueError("vision_merge_r > 0 needs vision_feature_layer=-1 (sizes are those of the last layer).")
        dim = self.vision_config.hidden_size
        if self.temporal_merging and (dim % self.temporal_num_heads or self.temporal_qk_dim % self.temporal_num_heads):
            raise ValueError(
                f"temporal_num_heads={self.temporal_num_heads} must divide the vision width ({dim}) and "
                f"temporal_qk_dim ({self.temporal_qk_dim})."
            )

    @property
    def connector_merge_schedule(self) -> list[int]:
        """Tokens merged by each connector layer (the current `merge_r`)."""
        return resolve_r(self.merge_r, self.connector_num_layers)


__all__ = ["SimVlgConfig"]
