"""transformers pipelines serve CosMo folders, with the package installed and as remote code without it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

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
        image = model.get_image_features(pixels).pooler_output
        text = model.get_text_features(**processor.contrastive_text_inputs(LABELS, return_tensors="pt")).pooler_output
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
        chat = [{{"role": "user", "content": [{{"type": "image", "image": image}}, {{"type": "text", "text": "Output:"}}]}}]
        reply = gen(text=chat, max_new_tokens=3)[0]["generated_text"][-1]
        print(json.dumps({{"scores": scores, "pooled": list(pooled.shape), "text": text, "reply": reply["role"]}}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for label, value in zip(LABELS, expected):
        assert abs(got["scores"][label] - value) < 1e-5
    assert got["pooled"] == [1, get_config("cosmo-tiny").contrastive_dim]
    assert got["text"].startswith("<visual>") and got["reply"] == "assistant"


# ------------------------------------------------------------------------------------ chats, video, batches, dtype
def _chat(first, second, caption):
    """Two-shot captioning in messages form: the CosMo prompt `<visual>Output: ...<|endofchunk|><visual>Output:`."""
    return [{"role": "user", "content": [{"type": "image", "image": first}, {"type": "text", "text": "Output:"}]},
            {"role": "assistant", "content": caption},
            {"role": "user", "content": [{"type": "image", "image": second}, {"type": "text", "text": "Output:"}]}]


def _video_chat(frames):
    return [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "Output:"}]}]


@pytest.fixture(scope="module", params=["cosmo-tiny", "simvlg-tiny"])
def trained_folder(request, tmp_path_factory):
    """A briefly trained model (distinct greedy continuations per image), saved with its processor."""
    from cosmo_vl.modeling import SimVlgForConditionalGeneration

    torch.manual_seed(0)
    name = request.param
    cls = CosmoForConditionalGeneration if name.startswith("cosmo") else SimVlgForConditionalGeneration
    model, processor = cls(get_config(name)), get_processor(name)
    captions = {(220, 40, 40): "a red circle", (40, 40, 220): "a blue circle"}
    batch = processor(text=[f"<visual>Output: {c}" for c in captions.values()],
                      images=[[_image(colour)] for colour in captions], return_labels=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp(name)
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _greedy(folder, messages, max_new_tokens=6):
    """The continuation `generate` gives for the prompt the processor builds from `messages` (no pipeline)."""
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_chat_video_batched_and_dtype_pipelines(trained_folder):
    red, blue = _image((220, 40, 40)), _image((40, 40, 220))
    processor = AutoProcessor.from_pretrained(trained_folder)
    assert processor.apply_chat_template(_chat(red, blue, "a red circle")) == (
        "<visual>Output: a red circle<|endofchunk|><visual>Output:")
    generator = pipeline("image-text-to-text", model=str(trained_folder))
    two_shot = _chat(blue, red, "a blue circle")
    reply = generator(text=two_shot, max_new_tokens=6)[0]["generated_text"]
    assert reply[:-1] == two_shot and reply[-1]["role"] == "assistant"
    assert reply[-1]["content"] == _greedy(trained_folder, two_shot)
    # prompts of different lengths in one batch: left padded, the same answers as one by one
    chats = [_chat(blue, red, "a blue circle")[2:],
             [{"role": "user", "content": [{"type": "image", "image": blue}, {"type": "text", "text": "Output: a"}]}]]
    single = [generator(text=c, max_new_tokens=6)[0]["generated_text"][-1]["content"] for c in chats]
    assert single[0] != single[1]  # the answer depends on the image
    batched = generator(text=chats, max_new_tokens=6, batch_size=2)
    assert [out[0]["generated_text"][-1]["content"] for out in batched] == single

    frames = [red, blue, red]
    video = processor.apply_chat_template(_video_chat(frames), tokenize=True, return_dict=True)
    assert video["pixel_values"].shape[:3] == (1, 1, 3) and video["frame_mask"].all()
    answer = generator(text=_video_chat(frames), max_new_tokens=6)[0]["generated_text"][-1]["content"]
    assert answer == _greedy(trained_folder, _video_chat(frames))

    half = pipeline("image-text-to-text", model=str(trained_folder), dtype=torch.bfloat16, device="cpu")
    assert half.model.dtype == torch.bfloat16 and half.device.type == "cpu"
    assert isinstance(half(text=chats[0], max_new_tokens=3)[0]["generated_text"][-1]["content"], str)
