"""Tests for the shipped tokenizer, CosmoProcessor and the prompt helpers (offline, CPU, fast)."""

import numpy as np
import pytest
import torch
from PIL import Image

from cosmo_vl.processing import (
    SPECIAL_TOKEN_IDS,
    CosmoProcessor,
    caption_prompt,
    load_default_tokenizer,
    messages_to_prompt,
    vqa_prompt,
)

try:  # PIL backend: works without torchvision
    from transformers import CLIPImageProcessorPil as ImageProcessor
except ImportError:  # pragma: no cover
    from transformers import CLIPImageProcessor as ImageProcessor

MEDIA, EOC = "<visual>", "<|endofchunk|>"


@pytest.fixture(scope="module")
def tokenizer():
    return load_default_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    image_processor = ImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    return CosmoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _image(color=(255, 0, 0), size=(40, 32)):
    return Image.new("RGB", size, color)


def _video(frames=5, h=24, w=36, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


def _reference_labels(ids, media_id, eoc_id, bos_id, pad_id):
    """Naive per-token reference: decide each position by looking backwards."""
    labels = []
    for j, t in enumerate(ids):
        prev = ids[:j]
        if t in (pad_id, bos_id, media_id) or media_id not in prev:
            labels.append(-100)
            continue
        last_media = max(k for k, x in enumerate(prev) if x == media_id)
        eoc_since_media = any(x == eoc_id for x in prev[last_media + 1 :])
        labels.append(-100 if eoc_since_media else t)
    return labels


# ---------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------
def test_special_token_ids_are_stable(tokenizer, processor):
    assert tokenizer.pad_token_id == 0 == SPECIAL_TOKEN_IDS["<pad>"]
    assert tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_id == 2
    assert tokenizer.unk_token_id == 3
    assert tokenizer.convert_tokens_to_ids(MEDIA) == 4 == processor.media_token_id
    assert tokenizer.convert_tokens_to_ids(EOC) == 5 == processor.endofchunk_token_id
    assert processor.media_token == MEDIA and processor.endofchunk_token == EOC
    assert len(tokenizer) == 2048


def test_bos_prepended_no_eos(tokenizer):
    ids = tokenizer("a red circle").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id
    ids = tokenizer(f"{MEDIA}a red circle{EOC}</s>").input_ids
    assert ids[:2] == [1, 4] and ids[-2:] == [5, 2]


@pytest.mark.parametrize("word", ["red", "hexagon", "disappears", "background", "corner", "seven", "7", "frame"])
def test_caption_words_are_single_tokens(tokenizer, word):
    assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1
    assert len(tokenizer(" " + word, add_special_tokens=False).input_ids) == 1


@pytest.mark.parametrize(
    "text",
    [
        "你好，世界！这是一个测试。",
        "مرحبا بالعالم",
        "emoji 😀🎉👍🏽 done",
        "Ünïcödé ñ ß  tabs\tand\nnewlines  ",
        "Привет",
    ],
)
def test_tokenizer_round_trip_multilingual(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


# ---------------------------------------------------------------------------------------------------------------
# processor: shapes, masks, placeholders
# ---------------------------------------------------------------------------------------------------------------
def test_shapes_and_masks_mixed_batch(processor):
    texts = [f"{MEDIA}a red square{MEDIA}two blue circles", "a caption", "text only", f"first {MEDIA} then"]
    out = processor(
        text=texts,
        images=[[_image(), _image((0, 0, 255))], [_image()], None, None],
        videos=[None, None, None, [_video(5)]],
    )
    B = len(texts)
    assert out["input_ids"].shape[0] == B and out["input_ids"].dtype == torch.long
    assert out["attention_mask"].shape == out["input_ids"].shape
    assert out["pixel_values"].shape == (B, 2, 5, 3, 32, 32)
    assert out["pixel_values"].dtype == torch.float32
    assert out["media_mask"].dtype == torch.bool
    assert out["media_mask"].tolist() == [[True, True], [True, False], [False, False], [True, False]]
    fm = out["frame_mask"]
    assert fm.shape == (B, 2, 5) and fm.dtype == torch.bool
    assert fm[0, :, 0].all() and not fm[0, :, 1:].any()
    assert fm[3, 0].all() and not fm[3, 1].any() and not fm[2].any()
    # padding is zero
    assert (out["pixel_values"][~fm] == 0).all()
    assert out["pixel_values"][fm].abs().sum() > 0
    # one <visual> per real media item
    n_media = (out["input_ids"] == processor.media_token_id).sum(1)
    assert n_media.tolist() == out["media_mask"].sum(1).tolist()
    assert "labels" not in out


def test_placeholder_prepended_for_single_media(processor):
    out = processor(text="a red circle", images=_image(), return_tensors=None)
    assert out["input_ids"][0][:2].tolist() == [1, processor.media_token_id]
    out2 = processor(text=[f"{MEDIA}a red circle"], images=[[_image()]], return_tensors=None)
    assert out["input_ids"].tolist() == out2["input_ids"].tolist()


def test_positional_call_and_flat_image_list(processor):
    img = _image()
    a = processor([img, img], ["a red circle", "a blue star"])
    b = processor(text=["a red circle", "a blue star"], images=[[img], [img]])
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_text_only_batch_has_no_pixel_values(processor):
    out = processor(text=["hello there", "a longer piece of text"])
    assert "pixel_values" not in out and "media_mask" not in out
    assert out["input_ids"].shape[0] == 2


def test_media_order_images_then_videos_and_explicit_media(processor):
    img, vid = _image(), _video(3)
    a = processor(text=[f"{MEDIA} and {MEDIA}"], images=[[img]], videos=[[vid]])
    b = processor(text=[f"{MEDIA} and {MEDIA}"], media=[[img, vid]])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert a["frame_mask"][0].sum(-1).tolist() == [1, 3]
    c = processor(text=[f"{MEDIA} and {MEDIA}"], media=[[vid, img]])
    assert c["frame_mask"][0].sum(-1).tolist() == [3, 1]


def test_video_as_list_of_frames_and_num_frames(processor):
    vid = _video(8)
    frames = [Image.fromarray(f) for f in vid]
    a = processor(text=[f"{MEDIA}clip"], videos=[[vid]])
    b = processor(text=[f"{MEDIA}clip"], videos=[[frames]])
    assert torch.allclose(a["pixel_values"], b["pixel_values"])
    c = processor(text=[f"{MEDIA}clip"], videos=[[vid]], num_frames=4)
    assert c["pixel_values"].shape[2] == 4
    idx = np.linspace(0, 7, 4).round().astype(int)
    assert torch.allclose(c["pixel_values"][0, 0], a["pixel_values"][0, 0, idx])
    processor.max_num_frames = 2
    try:
        assert processor(text=[f"{MEDIA}clip"], videos=[[vid]], num_frames=4)["pixel_values"].shape[2] == 2
    finally:
        processor.max_num_frames = None


def test_placeholder_count_mismatch(processor):
    with pytest.raises(ValueError) as e:
        processor(text=["fine", f"{MEDIA}{MEDIA}x"], images=[None, [_image()]])
    msg = str(e.value)
    assert "Sample 1" in msg and "2" in msg and "1" in msg
    with pytest.raises(ValueError, match=r"Sample 0.*1 .*placeholder.*0 media"):
        processor(text=[f"{MEDIA}x"])
    with pytest.raises(ValueError, match=r"Sample 0.*0 .*placeholder.*2 media"):
        processor(text=["no placeholder"], images=[[_image(), _image()]])


def test_empty_text_raises(processor):
    with pytest.raises(ValueError, match="Sample 1"):
        processor(text=["ok", "   "])


# ---------------------------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------------------------
def test_caption_pair_format(processor, tokenizer):
    out = processor(text=["a red circle"], images=[[_image()]], return_labels=True)
    ids = out["input_ids"][0].tolist()
    assert ids == tokenizer(f"{MEDIA}a red circle{EOC}</s>").input_ids
    assert out["labels"][0].tolist() == [-100, -100] + ids[2:-1] + [-100]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_match_reference(processor, padding_side):
    texts = [
        f"intro text {MEDIA}a red circle{EOC}junk between{MEDIA}two squares",
        f"{MEDIA}{MEDIA}caption for both{EOC}",
        "plain text, no media",
        f"{MEDIA}Question: what color? Short answer: red{EOC}{MEDIA}Question: shape? Short answer:",
    ]
    images = [[_image(), _image()], [_image(), _image()], None, [_image(), _image()]]
    out = processor(text=texts, images=images, return_labels=True, padding_side=padding_side)
    media_id, eoc_id = processor.media_token_id, processor.endofchunk_token_id
    ids, labels, mask = out["input_ids"], out["labels"], out["attention_mask"]
    for b in range(len(texts)):
        real = ids[b][mask[b].bool()].tolist()
        assert real[-1] == 2 and real[-2] == eoc_id  # </s> after a final <|endofchunk|>
        ref = _reference_labels(real, media_id, eoc_id, 1, 0)
        assert labels[b][mask[b].bool()].tolist() == ref
        assert (labels[b][~mask[b].bool()] == -100).all()
    # the <|endofchunk|> tokens closing a chunk are predicted, the text before the first media is not
    assert (labels[0] == eoc_id).sum() == 2
    assert (labels[2] == -100).all()


def test_padding_sides(processor):
    texts = ["short", "a much longer text than the first"]
    r = processor(text=texts, padding_side="right")
    l = processor(text=texts, padding_side="left")
    assert r["attention_mask"][0, 0] == 1 and r["attention_mask"][0, -1] == 0
    assert l["attention_mask"][0, 0] == 0 and l["attention_mask"][0, -1] == 1
    assert r["input_ids"][0, -1] == 0 and l["input_ids"][0, 0] == 0
    assert r["input_ids"][0][r["attention_mask"][0].bool()].tolist() == (
        l["input_ids"][0][l["attention_mask"][0].bool()].tolist()
    )
    m = processor(text=texts, padding="max_length", max_length=20)
    assert m["input_ids"].shape == (2, 20)


# ---------------------------------------------------------------------------------------------------------------
# truncation
# ---------------------------------------------------------------------------------------------------------------
def test_truncation(processor):
    text = f"{MEDIA}" + "word " * 30
    with pytest.raises(ValueError, match=r"Sample 0 is \d+ tokens long.*max_length=10.*truncation=True"):
        processor(text=[text], images=[[_image()]], max_length=10)
    out = processor(text=[text], images=[[_image()]], max_length=10, truncation=True)
    assert out["input_ids"].shape == (1, 10)
    late = "word " * 30 + MEDIA
    with pytest.raises(ValueError, match=r"Sample 0.*drop 1 of its 1"):
        processor(text=[late], images=[[_image()]], max_length=10, truncation=True)


# ---------------------------------------------------------------------------------------------------------------
# other entry points
# ---------------------------------------------------------------------------------------------------------------
def test_contrastive_text_inputs(processor, tokenizer):
    out = processor.contrastive_text_inputs(["a red circle", "two small blue squares in the corner"])
    assert set(out.keys()) == {"input_ids", "attention_mask"}
    assert out["input_ids"][0][out["attention_mask"][0].bool()].tolist() == tokenizer(
        f"{MEDIA}a red circle{EOC}</s>"
    ).input_ids
    assert out["attention_mask"][0, -1] == 0 and out["attention_mask"][1].all()
    train = processor(text=["a red circle"], images=[[_image()]], return_labels=True)
    assert train["input_ids"][0].tolist() == out["input_ids"][0][out["attention_mask"][0].bool()].tolist()


def test_decode_and_post_process(processor):
    ids = processor(text=[f"{MEDIA}a red circle"], images=[[_image()]], return_labels=True)["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a red circle"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "a red circle"
    assert processor.post_process_generation(["a red circle<|endofchunk|><visual>more", "blue</s><pad>"]) == [
        "a red circle",
        "blue",
    ]
    assert processor.post_process_generation(" green square<|endofchunk|>") == "green square"


def test_save_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert all(p.suffix in (".json", ".jinja") for p in tmp_path.iterdir())  # no pickles; the chat template as Jinja
    loaded = CosmoProcessor.from_pretrained(tmp_path)
    assert loaded.media_token_id == processor.media_token_id
    kwargs = dict(
        text=[f"{MEDIA}a red circle", f"{MEDIA}moves left"],
        images=[[_image()], None],
        videos=[None, [_video(3)]],
        return_labels=True,
    )
    a, b = processor(**kwargs), loaded(**kwargs)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------------------------
def test_caption_prompt():
    assert caption_prompt(["a red circle", "a blue star"]) == (
        f"{MEDIA}Output:a red circle{EOC}{MEDIA}Output:a blue star{EOC}{MEDIA}Output:"
    )
    assert caption_prompt(["x"], query=False) == f"{MEDIA}Output:x{EOC}"
    assert caption_prompt([]) == f"{MEDIA}Output:"


def test_vqa_prompt():
    assert vqa_prompt([("what color?", "red")], "what shape?") == (
        f"{MEDIA}Question:what color? Short answer:red{EOC}{MEDIA}Question:what shape? Short answer:"
    )


def test_messages_to_prompt(processor):
    img, vid = _image(), _video(2)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red block."}]},
        {"role": "user", "content": [{"type": "video", "video": vid}, {"type": "text", "text": "And this?"}]},
    ]
    text, media = messages_to_prompt(messages)
    assert text == f"{MEDIA}Describe it. A red block.{EOC}{MEDIA}And this?"
    assert len(media) == 2 and media[0] is img and media[1] is vid
    out = processor(text=[text], media=[media])
    assert out["frame_mask"][0].sum(-1).tolist() == [1, 2]
    text2, media2 = messages_to_prompt([{"role": "user", "content": [{"type": "image"}, "hi"]}])
    assert text2 == f"{MEDIA}hi" and media2 == []
