"""save_pretrained / from_pretrained through the Auto classes, with the package installed and as remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionModel,
)

import cosmo_vl
from cosmo_vl.modeling import CosmoConfig, CosmoForConditionalGeneration, CosmoModel
from cosmo_vl.presets import get_config, get_processor, list_presets

from tiny_configs import tiny_cosmo_config


def _inputs(processor, image_size=32):
    from PIL import Image

    images = [[Image.new("RGB", (image_size, image_size), (200, 30, 30))], [Image.new("RGB", (40, 30), (0, 90, 200))]]
    return processor(text=["a red square", "a blue circle on the left"], images=images, return_tensors="pt", return_labels=True)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(get_config("cosmo-tiny")).eval()
    with torch.no_grad():  # non-zero gates so the visual path matters in the comparisons
        for name, param in model.named_parameters():
            if name.endswith("_gate"):
                param.fill_(0.7)
    return model


def test_auto_classes_round_trip(tiny_model, tmp_path):
    processor = get_processor("cosmo-tiny")
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    batch = _inputs(processor)
    with torch.no_grad():
        expected = tiny_model(**batch)

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, CosmoConfig) and config.model_type == "cosmo"
    assert config.unimodal_depth == tiny_model.config.unimodal_depth

    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CosmoForConditionalGeneration)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.get_input_embeddings().weight.data_ptr()  # still tied
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded_processor).__name__ == "CosmoProcessor"
    batch2 = _inputs(reloaded_processor)
    for key in batch:
        torch.testing.assert_close(batch2[key], batch[key])
    with torch.no_grad():
        out = loaded(**batch2)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.loss, expected.loss)

    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, CosmoModel)
    with torch.no_grad():
        hidden = base(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    torch.testing.assert_close(tiny_model.lm_head(hidden), expected.logits)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), CosmoForConditionalGeneration)


def test_remote_code_round_trip_without_the_package(tiny_model, tmp_path):
    processor = get_processor("cosmo-tiny")
    cosmo_vl.enable_remote_code(tiny_model)
    try:
        tiny_model.save_pretrained(tmp_path)
    finally:
        type(tiny_model)._auto_class = None
        type(tiny_model.config)._auto_class = None
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_cosmo.CosmoModel"
    copied = sorted(p.name for p in tmp_path.glob("*.py"))
    for name in ("configuration_cosmo.py", "modeling_cosmo.py", "cross_attention.py", "resampler.py", "lm_split.py"):
        assert name in copied
    for source in tmp_path.glob("*.py"):
        assert "cosmo_vl" not in source.read_text(), f"{source.name} imports the package"
    batch = _inputs(processor)
    batch.pop("labels")
    torch.save(dict(batch), tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = tiny_model.model(**batch).last_hidden_state
        expected_logits = tiny_model(**batch).logits

    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["cosmo_vl"] = None  # the package is not importable in this process
        try:
            import cosmo_vl  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("package still importable")
        import torch
        from transformers import AutoModel, AutoModelForImageTextToText
        batch = torch.load({str(tmp_path / "inputs.pt")!r})
        base = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        full = AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(base).__name__ == "CosmoModel" and type(base).__module__.startswith("transformers_modules"), type(base)
        with torch.no_grad():
            torch.save({{"hidden": base(**batch).last_hidden_state, "logits": full(**batch).logits}},
                       {str(tmp_path / "outputs.pt")!r})
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    torch.testing.assert_close(outputs["hidden"], expected)
    torch.testing.assert_close(outputs["logits"], expected_logits)


def test_from_backbones_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cosmo_config("opt")
    CLIPVisionModel(cfg.vision_config).save_pretrained(tmp_path / "vision")
    AutoModelForCausalLM.from_config(cfg.text_config).save_pretrained(tmp_path / "text")
    model = CosmoForConditionalGeneration.from_backbones(
        vision=str(tmp_path / "vision"), text=str(tmp_path / "text"), unimodal_depth=2, num_latents=4,
        resampler_depth=1, media_token_id=3, endofchunk_token_id=4,
    ).eval()
    model.save_pretrained(tmp_path / "cosmo")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "cosmo").eval()
    ids = torch.randint(5, 90, (2, 9))
    ids[:, 1] = 3
    px = torch.randn(2, 1, 1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=px).logits, model(input_ids=ids, pixel_values=px).logits)
    assert loaded.config.text_config.model_type == "opt"


def test_presets_and_meta_device_2b():
    assert {"cosmo-tiny", "cosmo-2b", "cosmo-3b", "cosmo-8b"} <= set(list_presets())
    with pytest.raises(KeyError, match="Unknown preset"):
        get_config("cosmo-99b")
    with torch.device("meta"):
        model = CosmoForConditionalGeneration(get_config("cosmo-2b"))
    total = sum(p.numel() for p in model.parameters())
    assert 2.0e9 < total < 2.3e9  # OPT-IML-1.3B + ViT-L/14 + resampler + cross-attention = the released 2.1B
    assert model.config.text_config.num_hidden_layers == 24 and model.config.unimodal_depth == 12
    tiny = get_config("cosmo-tiny")
    processor = get_processor("cosmo-tiny")
    assert tiny.media_token_id == processor.media_token_id
    assert tiny.text_config.vocab_size == len(processor.tokenizer)
