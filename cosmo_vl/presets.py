"""Named model configurations, in the manner of open_clip's model configs.

    from cosmo_vl.presets import get_config, get_processor, list_presets
    model = CosmoForConditionalGeneration(get_config("cosmo-tiny"))

`cosmo-tiny` is the embedded default: a tiny CLIP-style ViT and a tiny Llama-style LM with the embedded
byte-level tokenizer, so everything runs offline. `simvlg-tiny`, `pformer-tiny` and `blip2-tiny` (transformers'
`Blip2Config`: tiny ViT, tiny Q-Former, the LM of `cosmo-tiny`) reuse those towers. The other presets have the shapes of the released CosMo
sizes (CLIP ViT-L/14 with OPT-IML-1.3B, RedPajama-INCITE-3B and Mistral-7B); build them on the meta device to
inspect them, or use `CosmoForConditionalGeneration.from_backbones` to load real towers.
"""

import math
from collections.abc import Callable

from transformers import CLIPVisionConfig, GPTNeoXConfig, LlamaConfig, MistralConfig, OPTConfig

from .modeling import CosmoConfig, SimVlgConfig
from .processing import CosmoProcessor, load_default_processor, load_default_tokenizer

def _vit_l14() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=224
    )


def _special_token_ids() -> dict:
    tok = load_default_tokenizer()
    return {
        "media_token_id": tok.convert_tokens_to_ids("<visual>"),
        "endofchunk_token_id": tok.convert_tokens_to_ids("<|endofchunk|>"),
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
    }


def _tiny_vit(patch_size: int = 8) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, patch_size=patch_size,
        image_size=32,
    )


def _cosmo_tiny() -> CosmoConfig:
    ids = _special_token_ids()
    # 4 px patches: 8 x 8 tokens resolve the shape and the place of 8 px objects (8 px patches blur both).
    vision = _tiny_vit(patch_size=4)
    text = LlamaConfig(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=ids["vocab_size"],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
    )
    # Random towers have nothing to preserve, so the tiny default trains them; released sizes freeze them.
    return CosmoConfig(
        vision_config=vision,
        text_config=text,
        unimodal_depth=2,
        cross_attention_interval=1,
        cross_attention_heads=4,
        cross_attention_head_dim=32,
        num_latents=16,
        resampler_depth=2,
        resampler_heads=4,
        resampler_head_dim=16,
        max_num_frames=16,
        max_num_media=16,
        resampler_spatial_tokens=(32 // 4) ** 2 + 1,  # 8 x 8 patches + CLS: the random tower has no spatial prior
        contrastive_dim=64,
        logit_scale_init_value=math.log(1 / 0.07),
        media_token_id=ids["media_token_id"],
        endofchunk_token_id=ids["endofchunk_token_id"],
        freeze_vision_tower=False,
        freeze_language_model=False,
        # At width 64 the usual 0.02 leaves the resampler's attention uniform (query . key ~ 0) for thousands of
        # steps; ~1/sqrt(width) lets it learn where objects are.
        initializer_range=0.08,
        # Position tables start as 2D sin-cos codes, and the gates open (tanh 1 = 0.76): random tables never told top
        # from bottom in the default run, closed gates delay reading the image (README, default-run figures).
        sincos_position_init=True,
        cross_attention_gate_init=1.0,
    )


def _simvlg_tiny() -> SimVlgConfig:
    """SimVLG on a tiny ViT (8 px patches) and the LM of `cosmo-tiny`: 17 vision tokens -> 2-layer connector
    merging 3 per layer -> 11."""
    cosmo = _cosmo_tiny()
    return SimVlgConfig(
        vision_config=_tiny_vit(patch_size=8),
        text_config=cosmo.text_config,
        connector_hidden_size=64,
        connector_num_layers=2,
        connector_num_heads=4,
        connector_intermediate_size=128,
        merge_r=3,
        temporal_merging=True,
        temporal_qk_dim=32,
        temporal_num_heads=4,
        media_token_id=cosmo.media_token_id,
        endofchunk_token_id=cosmo.endofchunk_token_id,
        freeze_vision_tower=False,
        freeze_language_model=False,
    )


BLIP2_IMAGE_TOKEN = "<image>"


def _blip2_tokenizer():
    """The embedded tokenizer plus BLIP-2's `<image>` placeholder (appended as id 2048, as `Blip2Processor` would)."""
    from transformers import AddedToken

    tokenizer = load_default_tokenizer()
    tokenizer.add_tokens([AddedToken(BLIP2_IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    return tokenizer


def _blip2_tiny():
    """BLIP-2 (transformers' `Blip2Config`) on tiny towers: a 2-layer ViT (32 px, 4 px patches: 65 tokens), a
    2-layer Q-Former with text input (stage 1) and 8 queries, and the Llama-style LM of `cosmo-tiny`; vocabularies
    include `<image>`."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

    tokenizer = _blip2_tokenizer()
    text = _cosmo_tiny().text_config
    text.vocab_size = len(tokenizer)
    # Blip2VisionConfig initialises with std 1e-10 (meant to be overwritten by pretrained weights): from scratch, 0.02.
    # 4 px patches resolve the shape and place of 8 px objects, as in cosmo-tiny.
    vision = Blip2VisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, patch_size=4, image_size=32,
        initializer_range=0.02,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        cross_attention_frequency=1,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        use_qformer_text_input=True,
        # ~1/sqrt(width), as cosmo-tiny's resampler: at 0.02 the queries attend uniformly (background only) for
        # about a thousand steps; here image-text contrast starts within a few hundred.
        initializer_range=0.08,
    )
    return Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=8,
        image_text_hidden_size=64,
        image_token_index=tokenizer.convert_tokens_to_ids(BLIP2_IMAGE_TOKEN),
        initializer_range=0.08,
    )


def _released(text, unimodal_depth: int, interval: int) -> CosmoConfig:
    ids = _special_token_ids()
    return CosmoConfig(
        vision_config=_vit_l14(),
        text_config=text,
        unimodal_depth=unimodal_depth,
        cross_attention_interval=interval,
        num_latents=64,
        resampler_depth=6,
        resampler_heads=8,
        resampler_head_dim=64,
        contrastive_dim=512,
        media_token_id=ids["media_token_id"],
        endofchunk_token_id=ids["endofchunk_token_id"],
    )


def _cosmo_2b() -> CosmoConfig:
    text = OPTConfig(
        hidden_size=2048,
        ffn_dim=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        word_embed_proj_dim=2048,
        vocab_size=50272,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return _released(text, unimodal_depth=12, interval=1)


def _cosmo_3b() -> CosmoConfig:
    text = GPTNeoXConfig(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=50432,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    return _released(text, unimodal_depth=16, interval=2)


def _cosmo_8b() -> CosmoConfig:
    text = MistralConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    )
    return _released(text, unimodal_depth=16, interval=4)


def _pformer_tiny():
    """P-Former with the embedded tokenizer: a tiny BERT encoder and a tiny Llama LM (8 prompts)."""
    from transformers import BertConfig

    from .modeling import PFormerConfig

    ids = _special_token_ids()
    encoder = BertConfig(
        vocab_size=ids["vocab_size"],
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
        pad_token_id=ids["pad_token_id"],
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=ids["vocab_size"],
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
    )
    return PFormerConfig(encoder_config=encoder, text_config=text, num_prompts=8, contrastive_dim=64)


_CONFIGS: dict[str, Callable] = {
    "cosmo-tiny": _cosmo_tiny,
    "cosmo-2b": _cosmo_2b,
    "cosmo-3b": _cosmo_3b,
    "cosmo-8b": _cosmo_8b,
    "pformer-tiny": _pformer_tiny,
    "simvlg-tiny": _simvlg_tiny,
    "blip2-tiny": _blip2_tiny,
}
_IMAGE_SIZES = {"simvlg-tiny": 32, "cosmo-tiny": 32, "blip2-tiny": 32}


def register_preset(name: str, config_fn: Callable, image_size: int = 224) -> None:
    """Add a named config (used by the other architectures of the family)."""
    _CONFIGS[name] = config_fn
    _IMAGE_SIZES[name] = image_size


def list_presets() -> list[str]:
    return sorted(_CONFIGS)


def get_config(name: str, **overrides):
    """A fresh config for preset `name`; keyword arguments override its fields."""
    if name not in _CONFIGS:
        raise KeyError(f"Unknown preset {name!r}; available: {', '.join(list_presets())}.")
    config = _CONFIGS[name]()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise KeyError(f"Preset {name!r} has no config field {key!r}.")
        setattr(config, key, value)
    return config


def get_processor(name: str, tokenizer=None, **kwargs) -> "CosmoProcessor | Blip2Processor":
    """The processor of preset `name`: a CLIP image processor at the preset's resolution and the embedded
    byte-level tokenizer (or `tokenizer`, e.g. the LM's own when towers are loaded from the Hub). BLIP-2 presets
    get transformers' `Blip2Processor` (BLIP image processor, tokenizer with `<image>`, the preset's query count)."""
    if name not in _CONFIGS:
        raise KeyError(f"Unknown preset {name!r}; available: {', '.join(list_presets())}.")
    if name.startswith("blip2"):
        from transformers import BlipImageProcessorPil, Blip2Processor

        size = _IMAGE_SIZES.get(name, 224)
        return Blip2Processor(
            BlipImageProcessorPil(size={"height": size, "width": size}, **kwargs),
            tokenizer if tokenizer is not None else _blip2_tokenizer(),
            num_query_tokens=get_config(name).num_query_tokens,
        )
    processor = load_default_processor(image_size=_IMAGE_SIZES.get(name, 224), **kwargs)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # prompts for generation; training rows are right padded by the processor
        processor.tokenizer = tokenizer
    return processor


def trainable_fraction_report(names=("cosmo-tiny", "cosmo-2b")) -> list[dict]:
    """Trainable/total parameters of each preset, built on the meta device (no weights allocated)."""
    import torch

    from .modeling import CosmoForConditionalGeneration, trainable_parameters

    rows = []
    for name in names:
        variants = [("as configured", {})]
        if name == "cosmo-tiny":
            variants.append(("towers frozen", {"freeze_vision_tower": True, "freeze_language_model": True}))
        for label, overrides in variants:
            with torch.device("meta"):
                model = CosmoForConditionalGeneration(get_config(name, **overrides))
            trainable, total, fraction = trainable_parameters(model)
            rows.append({"preset": name, "variant": label, "trainable": trainable, "total": total, "fraction": fraction})
    return rows


def main() -> None:
    for row in trainable_fraction_report():
        print(
            f"{row['preset']:<11} {row['variant']:<14} trainable {row['trainable'] / 1e6:9.2f}M / "
            f"{row['total'] / 1e6:9.2f}M = {100 * row['fraction']:.1f}%"
        )


if __name__ == "__main__":
    main()
