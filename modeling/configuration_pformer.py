"""P-Former configuration: a bidirectional text encoder that predicts soft prompts for a frozen causal LM."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .tower_attention import keep_tower_attention


@strict
class PFormerConfig(PreTrainedConfig):
    r"""
    Configuration of a P-Former (prompt former): a text encoder reads a sentence, its [CLS] state is mapped to
    `num_prompts` vectors of the LM's embedding width, and a frozen causal LM is trained to reconstruct the sentence
    from those prompts alone (stage 0, text only). The trained P-Former is then an alignment prior for the
    connector of a BLIP-2 style model.

    Args:
        encoder_config: sub-config of the bidirectional encoder (any transformers encoder; default BERT-base shapes).
        text_config: sub-config of the frozen causal LM (default OPT-2.7B shapes).
        num_prompts: number of predicted prompt vectors `n` (BLIP-2 uses 32 query tokens).
        prompt_hidden_size: width `d` of the intermediate `n x d` prompt grid (default: the encoder width).
        contrastive_dim: width of the [CLS] projection of the self-contrastive term.
        temperature_init / temperature_min / temperature_max: learnable temperature of that term and its clamp.
        contrastive_label_smoothing: label smoothing of the self-contrastive cross-entropy.
        mask_probability: fraction of (non-special, non-padding) encoder input tokens masked in training.
        mask_token_id: id written at masked positions; `None` removes masked tokens from attention instead.
        lm_loss_weight / contrastive_loss_weight / word_embedding_loss_weight: weights of the three terms.
        freeze_language_model: keep the causal LM frozen (the method requires it).
    """

    model_type = "pformer"
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="bert",
            init_kwargs={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
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

    encoder_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_prompts: int = 32
    prompt_hidden_size: int | None = None
    contrastive_dim: int = 256
    temperature_init: float = 0.07
    temperature_min: float = 0.001
    temperature_max: float = 0.5
    contrastive_label_smoothing: float = 0.1
    mask_probability: float = 0.25
    mask_token_id: int | None = None
    lm_loss_weight: float = 1.0
    contrastive_loss_weight: float = 1.0
    word_embedding_loss_weight: float = 1.0
    freeze_language_model: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        with keep_tower_attention(self, kwargs):
            super().__post_init__(**kwargs)
        if self.prompt_hidden_size is None:
            self.prompt_hidden_size = self.encoder_config.hidden_size
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts={self.num_prompts} must be >= 1.")
        if not 0.0 <= self.mask_probability < 1.0:
            raise ValueError(f"mask_probability={self.mask_probability} must be in [0, 1).")

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        """The config of the model's text input, the encoder (its `input_ids`, `get_input_embeddings`,
        `resize_token_embeddings`); with `decoder=True` alone, the causal LM's, which writes text."""
        if decoder and not encoder:
            return self.text_config
        return self.encoder_config

    @property
    def prompt_dim(self) -> int:
        """Width of each predicted prompt: the LM's input-embedding width."""
        text = self.text_config
        return getattr(text, "word_embed_proj_dim", None) or text.hidden_size


__all__ = ["PFormerConfig"]
