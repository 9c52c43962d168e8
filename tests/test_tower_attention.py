"""Towers handed to a composite model keep the attention implementation they were built with.

transformers' config initialisation resets `attn_implementation` on every sub-config, and a built tower shares its
config object with the composite config made from it: without care its layers would fall back to eager attention.
"""

import pytest
from tiny_configs import tiny_cosmo_config, tiny_pformer_config
from transformers import AutoModel, AutoModelForCausalLM

from cosmo_vl.modeling import (
    CosmoConfig,
    CosmoForConditionalGeneration,
    PFormerConfig,
    PFormerModel,
    SimVlgConfig,
    SimVlgForConditionalGeneration,
)
from cosmo_vl.presets import get_config


def _cosmo(vision, lm, **kwargs):
    fields = tiny_cosmo_config().to_diff_dict()
    fields.update(vision_config=vision.config, text_config=lm.config, **kwargs)
    return CosmoForConditionalGeneration(CosmoConfig(**fields), vision_model=vision, causal_lm=lm)


def _simvlg(vision, lm, **kwargs):
    fields = get_config("simvlg-tiny").to_diff_dict()
    fields.update(vision_config=vision.config, text_config=lm.config, **kwargs)
    return SimVlgForConditionalGeneration(SimVlgConfig(**fields), vision_model=vision, causal_lm=lm)


def _pformer(encoder, lm, **kwargs):
    fields = tiny_pformer_config().to_diff_dict()
    fields.update(encoder_config=encoder.config, text_config=lm.config, **kwargs)
    return PFormerModel(PFormerConfig(**fields), encoder=encoder, language_model=lm)


CASES = {
    "cosmo": (_cosmo, lambda: tiny_cosmo_config().vision_config, lambda: tiny_cosmo_config().text_config),
    "simvlg": (_simvlg, lambda: get_config("simvlg-tiny").vision_config, lambda: get_config("simvlg-tiny").text_config),
    "pformer": (_pformer, lambda: tiny_pformer_config().encoder_config, lambda: tiny_pformer_config().text_config),
}


def _towers(name, first: str, lm: str):
    _, first_config, text_config = CASES[name]
    tower = AutoModel.from_config(first_config(), attn_implementation=first)
    causal_lm = AutoModelForCausalLM.from_config(text_config(), attn_implementation=lm)
    return tower, causal_lm


@pytest.mark.parametrize("name", sorted(CASES))
def test_towers_keep_their_attention_implementation(name):
    tower, causal_lm = _towers(name, "eager", "sdpa")
    model = CASES[name][0](tower, causal_lm)
    assert tower.config._attn_implementation == "eager"
    assert causal_lm.config._attn_implementation == "sdpa"
    for module in tower.modules():
        if hasattr(module, "config"):
            assert module.config._attn_implementation == "eager", type(module).__name__
    for module in causal_lm.modules():
        if hasattr(module, "config"):
            assert module.config._attn_implementation == "sdpa", type(module).__name__
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", sorted(CASES))
def test_requested_attention_implementation_wins(name):
    tower, causal_lm = _towers(name, "sdpa", "sdpa")
    CASES[name][0](tower, causal_lm, attn_implementation="eager")
    assert tower.config._attn_implementation == "eager"
    assert causal_lm.config._attn_implementation == "eager"
