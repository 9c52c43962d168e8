"""Helpers every architecture of the family shares for its pretrained towers and its LM head."""

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_MAPPING


def as_media_batch(pixel_values: torch.Tensor) -> torch.Tensor:
    """Accept (B, C, H, W), (B, M, C, H, W) or (B, M, F, C, H, W); return (B, M, F, C, H, W)."""
    if pixel_values.dim() == 4:
        return pixel_values[:, None, None]
    if pixel_values.dim() == 5:
        return pixel_values[:, :, None]
    if pixel_values.dim() == 6:
        return pixel_values
    raise ValueError(
        f"pixel_values must be (B, C, H, W), (B, M, C, H, W) or (B, M, F, C, H, W); got shape {tuple(pixel_values.shape)}."
    )


def mark_initialized(module: nn.Module) -> None:
    """Pretrained towers handed to a constructor must not be re-initialised by `post_init`."""
    for sub in module.modules():
        sub._is_hf_initialized = True
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor._is_hf_initialized = True


def build_from_backbones(cls, vision: str, text: str, **config_kwargs):
    """`cls(config, vision_model=..., causal_lm=...)` around pretrained towers (path or Hub id). `vision` may be a
    vision-only checkpoint or a dual encoder (CLIP, SigLIP: its vision tower is used); `text` a causal LM."""
    vision_cfg = AutoConfig.from_pretrained(vision)
    vision_cfg = getattr(vision_cfg, "vision_config", None) or vision_cfg
    vision_model = MODEL_MAPPING[type(vision_cfg)].from_pretrained(vision)
    causal_lm = AutoModelForCausalLM.from_pretrained(text)
    config = cls.config_class(vision_config=vision_model.config, text_config=causal_lm.config, **config_kwargs)
    return cls(config, vision_model=vision_model, causal_lm=causal_lm)


def attach_lm_head(model: nn.Module, language_model: nn.Module, config, causal_lm=None) -> None:
    """Give `model` an `lm_head` over `language_model`'s vocabulary, tied like the LM ties it (the embedding's
    parameter name depends on the LM family), copied from `causal_lm`'s head when one is given."""
    embeddings = language_model.get_input_embeddings()
    model.lm_head = nn.Linear(embeddings.embedding_dim, embeddings.num_embeddings, bias=False)
    embed_name = next(n for n, m in language_model.named_modules() if m is embeddings)
    model._tied_weights_keys = {"lm_head.weight": f"model.language_model.{embed_name}.weight"}
    if causal_lm is not None:
        head = causal_lm.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError(f"{type(causal_lm).__name__} has a biased LM head, which is not supported yet.")
        model.lm_head.weight = head.weight if config.tie_word_embeddings else nn.Parameter(head.weight.detach().clone())
        mark_initialized(model.lm_head)


def stop_at_endofchunk(model) -> None:
    """Generation ends a chunk at `<|endofchunk|>` (the caption/answer terminator) as well as at EOS."""
    if model.config.endofchunk_token_id is None or model.generation_config is None:
        return
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if model.config.endofchunk_token_id not in eos:
        model.generation_config.eos_token_id = eos + [model.config.endofchunk_token_id]


def given_output_flags(output_hidden_states: bool | None, output_attentions: bool | None) -> dict:
    """The output flags a caller gave, as keyword arguments (a flag left None is the tower's config's to decide)."""
    flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
    return {k: v for k, v in flags.items() if v is not None}
