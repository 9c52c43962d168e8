"""SimVLG: Auto classes and remote code, cached generation, what trains, token counts, temporal merging."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

import cosmo_vl
from cosmo_vl.modeling import MergeSchedule, SimVlgConfig, SimVlgForConditionalGeneration, SimVlgModel
from cosmo_vl.modeling.modeling_simvlg import expand_media_tokens
from cosmo_vl.presets import get_config, get_processor


def _images(image_size=32):
    from PIL import Image

    return [[Image.new("RGB", (image_size, image_size), (200, 30, 30))], [Image.new("RGB", (40, 30), (0, 90, 200))]]


def _batch(processor, **kwargs):
    return processor(text=["a red square", "a blue circle on the left"], images=_images(), return_tensors="pt", **kwargs)


def _model(**overrides) -> SimVlgForConditionalGeneration:
    torch.manual_seed(0)
    return SimVlgForConditionalGeneration(get_config("simvlg-tiny", **overrides)).eval()


@pytest.fixture(scope="module")
def processor():
    return get_processor("simvlg-tiny")


def test_layout_loss_and_token_counts(processor):
    model = _model(freeze_vision_tower=True, freeze_language_model=True)
    batch = _batch(processor, return_labels=True)
    out = model(**batch)
    k = 17 - 3 - 3  # 16 patches + CLS, two connector layers merging 3 each
    assert out.visual_tokens.embeds.shape == (2, 1, k, 128)
    t = batch["input_ids"].shape[1]
    assert out.logits.shape[:2] == (2, t + k - 1) and out.labels.shape == (2, t + k - 1)
    # The placeholder became k visual tokens with label -100; the text labels moved with their tokens.
    assert (out.labels[:, 1 : 1 + k] == -100).all()
    for row in range(2):
        text_labels = batch["labels"][row][batch["labels"][row] != -100]
        assert torch.equal(out.labels[row][out.labels[row] != -100], text_labels)
    shift_logits, shift_labels = out.logits[:, :-1], out.labels[:, 1:]
    manual = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    # Only the connector, its projections train; the towers get no gradient.
    model.train()
    model(**batch).loss.backward()
    with_grad = {n.split(".")[1] for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"visual_projection", "connector", "language_projection"}
    assert all(p.requires_grad == (n.split(".")[1] in with_grad or n.startswith("model.temporal_merging"))
               for n, p in model.named_parameters())
    # merge_r is read at every forward (a training callback may set it), or a MergeSchedule drives it.
    model.eval()
    model.config.merge_r = [5, 2]
    assert model.encode_media(batch["pixel_values"]).tokens_per_media == 10
    model.config.merge_r = 0
    assert model.encode_media(batch["pixel_values"]).tokens_per_media == 17
    model.merge_schedule = MergeSchedule(4, start_scale=0.0, end_scale=1.0)
    model.merge_schedule.set_progress(0.5)
    assert model.encode_media(batch["pixel_values"]).tokens_per_media == 13
    # Merging inside the vision tower too: 17 -> 15 -> 13 there, then -3 -3 in the connector.
    both = _model(vision_merge_r=2, temporal_merging=False)
    assert both.encode_media(batch["pixel_values"]).tokens_per_media == 7


def test_expand_media_tokens_left_and_right_padding():
    ids = torch.tensor([[0, 0, 1, 9, 5], [1, 9, 5, 6, 9]])  # 9 = placeholder; row 1 has a second (text) one
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, -100, 5], [-100, -100, 5, 6, 9]])
    new_ids, new_mask, new_labels = expand_media_tokens(ids, mask, labels, 9, torch.tensor([1, 1]), 3)
    assert new_ids.tolist() == [[0, 0, 1, 9, 9, 9, 5], [1, 9, 9, 9, 5, 6, 9]]
    assert new_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]
    assert new_labels.tolist() == [[-100] * 6 + [5], [-100] * 4 + [5, 6, 9]]
    right_ids, right_mask, _ = expand_media_tokens(ids[1:, :3], None, None, 9, torch.tensor([1]), 2)
    assert right_ids.tolist() == [[1, 9, 9, 5]] and right_mask.tolist() == [[1, 1, 1, 1]]


def test_generate_cached_uncached_and_step_by_step(processor):
    model = _model()
    processor.tokenizer.padding_side = "left"
    try:
        batch = processor(text=["a red", "a blue circle on"], images=_images(), return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = "right"
    batch.pop("labels", None)
    kwargs = dict(max_new_tokens=5, do_sample=False, eos_token_id=None)
    cached = model.generate(**batch, **kwargs)
    uncached = model.generate(**batch, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : batch["input_ids"].shape[1]], batch["input_ids"])  # the prompt as given
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        for _ in range(5):  # full recomputation each step, one placeholder per image
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(cached, ids)
    # The media are encoded once: the vision tower runs in the prefill only.
    calls = []
    handle = model.model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.generate(**batch, **kwargs)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_video_temporal_merging_starts_as_the_image_model():
    model = _model()
    assert all(layer.gate.item() == 0.0 for layer in model.model.temporal_merging.layers)
    torch.manual_seed(1)
    frames = torch.randn(1, 1, 3, 3, 32, 32)
    frame_mask = torch.tensor([[[True, True, False]]])
    with torch.no_grad():
        video = model.encode_media(frames, frame_mask=frame_mask)
        tower = model.model.vision_model(pixel_values=frames[0, 0, :2]).last_hidden_state.mean(0, keepdim=True)
        state = model.model.connector(
            model.model.visual_projection(tower), torch.ones(1, 17), model.model.connector_r(), 1
        )[0]
        expected = model.model.language_projection(state)
        torch.testing.assert_close(video.embeds[0, 0], expected[0], rtol=1e-5, atol=1e-5)
        same = model.encode_media(frames[:, :, :1].expand(-1, -1, 3, -1, -1, -1))
        single = model.encode_media(frames[:, :, :1])
        torch.testing.assert_close(same.embeds, single.embeds, rtol=1e-5, atol=1e-5)
    # The gates (and only the temporal part of the tower) learn from video when the tower is frozen.
    frozen = _model(freeze_vision_tower=True, freeze_language_model=True).train()
    frozen.encode_media(frames, frame_mask=frame_mask).embeds.sum().backward()
    assert all(layer.gate.grad is not None for layer in frozen.model.temporal_merging.layers)
    assert all(p.grad is None for p in frozen.model.vision_model.parameters())


def test_auto_classes_round_trip(processor, tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    batch = _batch(processor, return_labels=True)
    with torch.no_grad():
        expected = model(**batch)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SimVlgConfig) and config.merge_r == 3
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SimVlgForConditionalGeneration)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.get_input_embeddings().weight.data_ptr()
    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ == "CosmoProcessor"
    with torch.no_grad():
        out = loaded(**batch)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.loss, expected.loss)
    assert isinstance(AutoModel.from_pretrained(tmp_path), SimVlgModel)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), SimVlgForConditionalGeneration)


def test_remote_code_round_trip_without_the_package(processor, tmp_path):
    model = _model()
    cosmo_vl.enable_remote_code(model, processor)
    try:
        model.save_pretrained(tmp_path)
        processor.save_pretrained(tmp_path)
    finally:
        type(model)._auto_class = None
        type(model.config)._auto_class = None
        type(processor)._auto_class = None
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_simvlg.SimVlgForConditionalGeneration"
    copied = {p.name for p in tmp_path.glob("*.py")}
    assert {"configuration_simvlg.py", "modeling_simvlg.py", "token_merging.py", "temporal_merging.py"} <= copied
    for source in tmp_path.glob("*.py"):
        assert "cosmo_vl" not in source.read_text(), f"{source.name} imports the package"
    batch = _batch(processor)
    batch.pop("labels", None)
    torch.save(dict(batch), tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**batch).logits
        expected_generation = model.generate(**batch, max_new_tokens=3, do_sample=False, eos_token_id=None)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["cosmo_vl"] = None  # the package is not importable in this process
        import torch
        from transformers import AutoModelForImageTextToText
        batch = torch.load({str(tmp_path / "inputs.pt")!r})
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model)
        with torch.no_grad():
            logits = model(**batch).logits
            generated = model.generate(**batch, max_new_tokens=3, do_sample=False, eos_token_id=None)
        torch.save({{"logits": logits, "generated": generated}}, {str(tmp_path / "outputs.pt")!r})
        from PIL import Image
        from transformers import pipeline
        captioner = pipeline("image-text-to-text", model={str(tmp_path)!r}, trust_remote_code=True)
        image = Image.new("RGB", (32, 32), (200, 30, 30))
        chat = [{{"role": "user", "content": [{{"type": "image", "image": image}}, {{"type": "text", "text": "Output:"}}]}}]
        assert captioner(text=chat, max_new_tokens=2)[0]["generated_text"][-1]["role"] == "assistant"
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    torch.testing.assert_close(outputs["logits"], expected)
    assert torch.equal(outputs["generated"], expected_generation)
