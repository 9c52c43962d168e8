"""transformers pipelines serve CosMo folders, with the package installed and as remote code without it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import pipeline

import cosmo_vl
from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.presets import get_config, get_processor

LABELS = ["a large red circle", "a small blue square on the left", "a large green star"]


def _image(colour=(220, 40, 40)):
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    ImageDraw.Draw(image).ellipse([5, 5, 27, 27], fill=colour)
    return image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cosmo_pipeline")
    model = CosmoForConditionalGeneration(get_config("cosmo-tiny")).eval()
    processor = get_processor("cosmo-tiny")
    cosmo_vl.enable_remote_code(model, processor)
    try:
        model.save_pretrained(path)
        processor.save_pretrained(path)
    finally:
        for obj in (model, model.config, processor):
            type(obj)._auto_class = None
    return path


def _expected_zero_shot(folder):
    model = CosmoForConditionalGeneration.from_pretrained(folder).eval()
    processor = get_processor("cosmo-tiny")
    with torch.no_grad():
        pixels = processor(text=["<visual>"], images=[[_image()]], return_tensors="pt")["pixel_values"]
        image = model.get_image_features(pixels)
        text = model.get_text_features(**processor.contrastive_text_inputs(LABELS, return_tensors="pt"))
        return (model.model.logit_scale() * image @ text.t()).softmax(-1)[0]


def test_pipelines_with_package(folder):
    zero_shot = pipeline("zero-shot-image-classification", model=str(folder))
    scores = {r["label"]: r["score"] for r in zero_shot(_image(), candidate_labels=LABELS, hypothesis_template="{}")}
    expected = _expected_zero_shot(folder)
    for label, value in zip(LABELS, expected.tolist()):
        assert abs(scores[label] - value) < 1e-5

    features = pipeline("image-feature-extraction", model=str(folder))
    pooled = features([_image(), _image((0, 0, 255))], pool=True, return_tensors=True)
    assert len(pooled) == 2 and pooled[0].shape == (1, get_config("cosmo-tiny").contrastive_dim)
    assert torch.allclose(pooled[0].norm(dim=-1), torch.ones(1), atol=1e-5)

    generator = pipeline("image-text-to-text", model=str(folder))
    out = generator(images=[_image(), _image()], text=["<visual>", "<visual>Output:"], max_new_tokens=5, batch_size=2)
    assert len(out) == 2 and out[0]["generated_text"].startswith("<visual>")


def test_pipelines_as_remote_code_without_package(folder, tmp_path):
    config = json.loads((folder / "config.json").read_text())
    assert "AutoModelForZeroShotImageClassification" in config["auto_map"]
    assert "AutoProcessor" in json.loads((folder / "processor_config.json").read_text())["auto_map"]
    image_path = tmp_path / "red.png"
    _image().save(image_path)
    expected = _expected_zero_shot(folder).tolist()
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["cosmo_vl"] = None
        from transformers import pipeline
        from PIL import Image
        image = Image.open({str(image_path)!r})
        zs = pipeline("zero-shot-image-classification", model={str(folder)!r}, trust_remote_code=True)
        scores = {{r["label"]: r["score"] for r in zs(image, candidate_labels={LABELS!r}, hypothesis_template="{{}}")}}
        fe = pipeline("image-feature-extraction", model={str(folder)!r}, trust_remote_code=True)
        pooled = fe(image, pool=True, return_tensors=True)
        gen = pipeline("image-text-to-text", model={str(folder)!r}, trust_remote_code=True)
        text = gen(images=image, text="<visual>", max_new_tokens=3)[0]["generated_text"]
        print(json.dumps({{"scores": scores, "pooled": list(pooled.shape), "text": text}}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for label, value in zip(LABELS, expected):
        assert abs(got["scores"][label] - value) < 1e-5
    assert got["pooled"] == [1, get_config("cosmo-tiny").contrastive_dim]
    assert got["text"].startswith("<visual>")
