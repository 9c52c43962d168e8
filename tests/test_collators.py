"""Collator over every sample layout, and a fuzz of malformed samples through loader -> processor -> collator."""

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from cosmo_vl.presets import get_processor
from cosmo_vl.processing import SampleError, VLCollator, load_embedded_dataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_embedded_dataset("shapes-captions", cache_dir=str(tmp_path_factory.mktemp("c")), num_train=64, num_test=8)


@pytest.fixture(scope="module")
def processor():
    return get_processor("cosmo-tiny")


def write_mp4(path, frames=8, size=32, colour=(255, 0, 0)):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.zeros((size, size, 3), dtype=np.uint8)
            img[:, : (i + 1) * size // frames] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------------------- collator
def test_collator_pairs_interleaved_and_video(corpus, processor, tmp_path):
    collator = VLCollator(processor)
    batch = collator([corpus["train"][i] for i in range(4)])
    assert batch["pixel_values"].shape[:3] == (4, 1, 1) and (batch["labels"] != -100).any()
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    doc = {"images": [red, None, blue, None], "texts": [None, "a red one.", None, "a blue one."]}
    batch = collator([doc])
    assert batch["pixel_values"].shape[:2] == (1, 2) and int((batch["input_ids"] == processor.media_token_id).sum()) == 2
    write_mp4(tmp_path / "c.mp4", frames=8)
    batch = VLCollator(processor, num_frames=4)([{"video": str(tmp_path / "c.mp4"), "text": "a bar grows"}])
    assert batch["pixel_values"].shape[:3] == (1, 1, 4)


def test_fuzz_malformed_samples_are_errors_or_counted_skips(processor, tmp_path):
    """1000+ malformed samples mixed with valid ones: every bad one is a clear error or a counted skip, and
    every valid sample of the same batch survives."""
    rng = random.Random(0)
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(bytes(rng.randrange(256) for _ in range(64)))
    write_mp4(tmp_path / "ok.mp4")
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "ok.mp4").read_bytes()[:200])
    non_utf8 = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"bad\xffname.png"))
    with open(os.fsencode(non_utf8), "wb") as handle:
        handle.write(b"\x00\x01")
    good = Image.new("RGB", (32, 32), "green")
    malformed = [
        lambda: {"image": str(tmp_path / "zero.png"), "text": "zero bytes"},
        lambda: {"image": str(tmp_path / "garbage.png"), "text": "garbage"},
        lambda: {"image": str(tmp_path / "missing.png"), "text": "missing"},
        lambda: {"image": Image.new("CMYK", (1, 1)), "text": "one pixel"},
        lambda: {"image": good, "text": ""},
        lambda: {"image": good, "text": "   \n\t"},
        lambda: {"image": good, "text": None},
        lambda: {"image": good, "text": "<visual><visual> two placeholders one image"},
        lambda: {"images": [good, good], "text": "<visual> one placeholder two images"},
        lambda: {"image": good, "text": "word " * 5000},
        lambda: {"video": str(tmp_path / "cut.mp4"), "text": "truncated video"},
        lambda: {"video": str(tmp_path / "nope.mp4"), "text": "missing video"},
        lambda: {"image": b"\x89PNG\r\n\x1a\n", "text": "truncated png header"},
        lambda: {"image": 12345, "text": "wrong type"},
        lambda: {"image": non_utf8, "text": "non-UTF-8 path"},
    ]
    collator = VLCollator(processor, on_error="skip", max_length=128)
    strict = VLCollator(processor, max_length=128)
    total_bad = 0
    for step in range(95):
        examples, valid = [], []
        for _ in range(14):
            if rng.random() < 0.2:
                text = f"valid sample {step} {len(examples)}"
                examples.append({"image": good, "text": text})
                valid.append(text)
            else:
                examples.append(rng.choice(malformed)())
                total_bad += 1
        if not valid:
            examples.append({"image": good, "text": f"valid sample {step} last"})
            valid.append(f"valid sample {step} last")
        batch = collator(examples)
        decoded = processor.batch_decode(batch["input_ids"], skip_special_tokens=True)
        assert len(decoded) == len(valid)
        assert sorted(d.strip() for d in decoded) == sorted(valid)
        bad = rng.choice(malformed)()
        with pytest.raises((SampleError, ValueError)) as err:
            strict([bad])
        assert str(err.value)
    assert total_bad >= 1000
    assert collator.stats.total == total_bad
    assert torch.is_tensor(batch["pixel_values"])


def test_round_robin_batches_keep_one_kind_per_batch_and_the_ratios(corpus, processor, tmp_path):
    from cosmo_vl.processing import RoundRobinBatches

    docs = [{"images": [Image.new("RGB", (32, 32), "red"), None], "texts": [None, f"doc {i}."]} for i in range(5)]
    mixed = RoundRobinBatches([corpus["train"], docs], ratios=[3, 1], batch_size=4, num_batches=40, seed=0,
                              names=["pairs", "docs"])
    assert len(mixed) == 160
    kinds = [mixed.source_of(b * 4) for b in range(40)]
    assert kinds.count("pairs") == 30 and kinds.count("docs") == 10
    for b in range(40):  # every batch holds one kind
        assert len({mixed.source_of(b * 4 + k) for k in range(4)}) == 1
    again = RoundRobinBatches([corpus["train"], docs], ratios=[3, 1], batch_size=4, num_batches=40, seed=0)
    assert again.plan == mixed.plan
    collator = VLCollator(processor)
    first_docs = kinds.index("docs") * 4
    batch = collator([mixed[first_docs + k] for k in range(4)])
    assert batch["pixel_values"].shape[:2] == (4, 1)
    grouped = RoundRobinBatches([corpus["train"], docs], ratios=[1, 1], batch_size=2, num_batches=8, group=2)
    for step in range(4):  # with 2 processes, both get the same kind at each step
        assert len({grouped.source_of(step * 4 + k) for k in range(4)}) == 1
