"""Tiny in-memory configs for the model tests (no downloads, a few hundred thousand parameters each)."""

import torch
from transformers import (
    BertConfig,
    CLIPVisionConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    SiglipVisionConfig,
)

from cosmo_vl.modeling import CosmoConfig, PFormerConfig

VOCAB = 96
MEDIA_ID = 3
EOC_ID = 4
PAD_ID = 0


def tiny_vision(kind: str = "clip"):
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8)
    return SiglipVisionConfig(**common) if kind == "siglip" else CLIPVisionConfig(**common)


def tiny_text(family: str = "llama", num_layers: int = 4, tie: bool = True):
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                  max_position_embeddings=128, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=tie)
    if family == "llama":
        return LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common)
    if family == "mistral":
        return MistralConfig(intermediate_size=64, num_key_value_heads=2, sliding_window=None, **common)
    if family == "qwen2":
        return Qwen2Config(intermediate_size=64, num_key_value_heads=2, **common)
    if family == "opt":
        return OPTConfig(ffn_dim=64, word_embed_proj_dim=32, enable_bias=True, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(intermediate_size=64, use_parallel_residual=True, **common)
    raise ValueError(family)


def tiny_cosmo_config(family: str = "llama", vision: str = "clip", **overrides) -> CosmoConfig:
    kwargs = dict(
        vision_config=tiny_vision(vision),
        text_config=tiny_text(family),
        unimodal_depth=2,
        cross_attention_interval=1,
        cross_attention_heads=2,
        cross_attention_head_dim=16,
        num_latents=4,
        resampler_depth=1,
        resampler_heads=2,
        resampler_head_dim=16,
        max_num_frames=4,
        max_num_media=8,
        contrastive_dim=16,
        logit_scale_init_value=2.6592,
        media_token_id=MEDIA_ID,
        endofchunk_token_id=EOC_ID,
    )
    kwargs.update(overrides)
    return CosmoConfig(**kwargs)



def tiny_pformer_config(**overrides) -> PFormerConfig:
    encoder = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return PFormerConfig(encoder_config=encoder, text_config=text, num_prompts=4, contrastive_dim=16, **overrides)

def collate_rows(examples: list[dict]) -> dict:
    """Right-pad pre-tokenised rows (`input_ids`, `labels`, `pixel_values` (M, F, C, H, W)) into a model batch."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), PAD_ID)
    labels = torch.full((len(examples), length), -100)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = e["input_ids"], e["labels"], 1
    pixels = torch.stack([e["pixel_values"] for e in examples])  # (B, M, F, C, H, W)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels,
            "media_mask": torch.ones(pixels.shape[:2], dtype=torch.bool)}
