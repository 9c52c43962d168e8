"""Make a saved folder loadable with `trust_remote_code=True` where cosmo-vl is not installed."""

from transformers import PreTrainedModel

# Auto class -> class name, per model_type; the modeling files are copied by `save_pretrained`.
AUTO_MAPS = {
    "cosmo": {
        "AutoConfig": "configuration_cosmo.CosmoConfig",
        "AutoModel": "modeling_cosmo.CosmoModel",
        "AutoModelForImageTextToText": "modeling_cosmo.CosmoForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_cosmo.CosmoForConditionalGeneration",
        "AutoModelForZeroShotImageClassification": "modeling_cosmo.CosmoForZeroShotImageClassification",
    },
    "simvlg": {
        "AutoConfig": "configuration_simvlg.SimVlgConfig",
        "AutoModel": "modeling_simvlg.SimVlgModel",
        "AutoModelForImageTextToText": "modeling_simvlg.SimVlgForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_simvlg.SimVlgForConditionalGeneration",
    },
    "pformer": {
        "AutoConfig": "configuration_pformer.PFormerConfig",
        "AutoModel": "modeling_pformer.PFormerModel",
    },
}


def enable_remote_code(model: PreTrainedModel, processor=None) -> PreTrainedModel:
    """Register `model`'s classes for remote code so its next `save_pretrained` also writes the modeling files
    (only relative imports inside `cosmo_vl.modeling`, so they are self-contained) and an `auto_map` covering
    every Auto class of the architecture. With `processor`, its next `save_pretrained` copies the processor's
    (self-contained) module and maps `AutoProcessor` to it. Returns `model`."""
    model_type = model.config.model_type
    if model_type not in AUTO_MAPS:
        raise ValueError(f"No remote-code mapping for model_type={model_type!r}; known: {sorted(AUTO_MAPS)}.")
    auto_map = AUTO_MAPS[model_type]
    own = next(auto for auto, ref in auto_map.items() if ref.endswith("." + type(model).__name__))
    type(model).register_for_auto_class(own)
    type(model.config).register_for_auto_class()
    model.config.auto_map = dict(auto_map)
    if processor is not None:
        type(processor).register_for_auto_class("AutoProcessor")
    return model
