"""Embedded generated corpora: determinism, held-out combinations, captions, real mp4s, the on-disk cache."""

import random
import shutil

import numpy as np
import pytest

from cosmo_vl.processing import scenes
from cosmo_vl.processing.synthetic import (
    EMBEDDED_DATASETS,
    corpus_dir,
    flatten_interleaved,
    held_out_combinations,
    interleaved_to_text,
    load_embedded_dataset,
    zero_shot_classes,
    zero_shot_prompts,
)
from cosmo_vl.processing.video import read_video

SMALL = {
    "shapes-captions": {"num_train": 200, "num_test": 40},
    "shapes-vqa": {"num_train": 200, "num_test": 40},
    "shapes-interleaved": {"num_train": 30, "num_test": 10},
    "shapes-videos": {"num_train": 24, "num_test": 8},
    "shapes-video-interleaved": {"num_train": 6, "num_test": 4},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture(scope="module")
def corpora(cache):
    return {name: load_embedded_dataset(name, cache_dir=cache, **sizes) for name, sizes in SMALL.items()}


def test_every_corpus_builds_with_its_splits_and_schema(corpora):
    assert set(corpora) == set(EMBEDDED_DATASETS)
    assert set(corpora["shapes-captions"]) == {"train", "test", "test_iid"}
    assert set(corpora["shapes-videos"]) == {"train", "test"}
    assert len(corpora["shapes-captions"]["train"]) == 200 and len(corpora["shapes-videos"]["test"]) == 8
    captions = corpora["shapes-captions"]["train"]
    assert {"image", "text", "label", "colour", "shape", "size", "position", "count", "background"} <= set(
        captions.column_names)
    assert captions[0]["image"].size == (32, 32) and captions[0]["image"].mode == "RGB"
    assert captions.features["label"].names == zero_shot_classes("shapes-captions")
    prompts = zero_shot_prompts("shapes-captions")
    assert len(prompts) == len(zero_shot_classes("shapes-captions")) == 64
    one_group = [r for r in captions if r["label"] >= 0]
    assert one_group and all(r["text"] in prompts[r["label"]] for r in one_group)
    assert zero_shot_classes("shapes-videos") is None and zero_shot_prompts("shapes-vqa") is None
    assert set(corpora["shapes-interleaved"]["train"].column_names) >= {"images", "texts", "text"}
    assert set(corpora["shapes-video-interleaved"]["train"].column_names) >= {"videos", "texts", "text"}


def test_same_seed_same_data_other_seed_other_data(corpora, tmp_path):
    again = load_embedded_dataset("shapes-captions", cache_dir=tmp_path, **SMALL["shapes-captions"])
    first = corpora["shapes-captions"]["train"]
    assert again["train"]["text"] == first["text"]
    assert np.array_equal(np.asarray(again["train"][7]["image"]), np.asarray(first[7]["image"]))
    other = load_embedded_dataset("shapes-captions", cache_dir=tmp_path, seed=1, **SMALL["shapes-captions"])
    assert other["train"]["text"] != first["text"]
    assert corpus_dir("shapes-captions", tmp_path, 1, **SMALL["shapes-captions"]).name.startswith(
        "shapes-captions-v1-1-")


def test_cache_is_reused_and_env_var_is_honoured(corpora, cache, tmp_path, monkeypatch):
    path = corpus_dir("shapes-captions", cache, 0, **SMALL["shapes-captions"])
    assert (path / "dataset_dict.json").exists()
    stamp = (path / "dataset_dict.json").stat().st_mtime_ns
    load_embedded_dataset("shapes-captions", cache_dir=cache, **SMALL["shapes-captions"])
    assert (path / "dataset_dict.json").stat().st_mtime_ns == stamp  # loaded, not rebuilt
    monkeypatch.setenv("COSMO_VL_CACHE", str(tmp_path / "env"))
    load_embedded_dataset("shapes-vqa", num_train=10, num_test=4)
    assert any(p.name.startswith("shapes-vqa-v1-0") for p in (tmp_path / "env").iterdir())
    assert corpus_dir("shapes-vqa").name == "shapes-vqa-v1-0"  # default sizes: no options hash
    with pytest.raises(ValueError, match="unknown embedded dataset"):
        load_embedded_dataset("shapes-nothing")


def test_held_out_colour_shape_pairs_only_in_test(corpora):
    held = set(held_out_combinations("shapes-captions"))
    assert held == scenes.HELD_OUT_PAIRS and len(held) == 8
    assert len({c for c, _ in held}) == 8 and len({s for _, s in held}) == 8  # one per colour and per shape
    for name in ("shapes-captions", "shapes-vqa"):
        data = corpora[name]
        for split in ("train", "test_iid"):
            pairs = {(o["colour"], o["shape"]) for objects in data[split]["objects"] for o in objects}
            assert not pairs & held, (name, split)
        assert all(any((o["colour"], o["shape"]) in held for o in objects) for objects in data["test"]["objects"])
    for text in corpora["shapes-interleaved"]["train"]["text"]:
        assert not any(f"{c} {s}" in text for c, s in held)


def test_held_out_shape_event_pairs_only_in_test(corpora):
    held = set(held_out_combinations("shapes-videos"))
    assert held == scenes.HELD_OUT_EVENTS
    for name in ("shapes-videos", "shapes-video-interleaved"):
        train, test = corpora[name]["train"], corpora[name]["test"]
        assert not any((row["shape"], e) in held for row in train for e in row["events"])
        assert all(any((row["shape"], e) in held for e in row["events"]) for row in test)


def test_captions_carry_every_attribute(corpora):
    data = corpora["shapes-captions"]["train"]
    names = zero_shot_classes("shapes-captions")
    for row in data:
        words = row["text"].replace(",", "").split()
        for obj in row["objects"]:
            assert obj["colour"] in words and obj["size"] in words and obj["position"] in words
            assert obj["shape"] in words or scenes.PLURALS[obj["shape"]] in words
            assert (scenes.NUMBER_WORDS[obj["count"]] if obj["count"] > 1 else "a") in words
        assert row["background"] in words and words[-1] == "background"
        if len(row["objects"]) == 1:
            assert names[row["label"]] == scenes.class_name(row["colour"], row["shape"])
        else:
            assert row["label"] == -1
    rng = random.Random(0)
    scene = scenes.Scene((scenes.Group("red", "circle", "large", "left", 2),), "white")
    assert scene.caption == "two large red circles on the left, white background"
    assert scenes.draw_scene(scene, rng, 64).size == (64, 64)
    # The caption is a function of the scene: equal captions, equal attributes.
    seen = {}
    for row in data:
        key = (row["text"],)
        assert seen.setdefault(key, row["objects"]) == row["objects"]


def test_vqa_answers_match_the_scene(corpora):
    data = corpora["shapes-vqa"]["train"]
    assert {"colour", "shape", "count", "size", "position", "background", "exists"} >= set(data["question_type"])
    for row in data:
        objects, kind, answer = row["objects"], row["question_type"], row["answer"]
        assert row["text"] == f"Question:{row['question']} Short answer:{answer}"
        if kind == "background":
            assert answer == row["background"]
        elif kind == "colour":
            assert answer in {o["colour"] for o in objects}
        elif kind == "shape":
            assert answer in {o["shape"] for o in objects} and answer not in row["question"]
        elif kind == "count":
            assert answer in {scenes.NUMBER_WORDS[o["count"]] for o in objects}
        elif kind == "exists":
            assert answer in ("yes", "no")


def test_interleaved_documents_and_episodes(corpora):
    data = corpora["shapes-interleaved"]["train"]
    assert set(data["kind"]) == {"document", "episode"}
    for row in data:
        assert len(row["images"]) == len(row["texts"])
        assert all((i is None) != (t is None) for i, t in zip(row["images"], row["texts"]))
        text, images = interleaved_to_text(row["images"], row["texts"])
        assert text == row["text"] and len(images) == row["num_images"] == text.count("<visual>")
    flat = flatten_interleaved(data.select(range(3)))
    assert all(None not in r["images"] and r["text"].count("<visual>") == len(r["images"]) for r in flat)
    episode = next(r for r in data if r["kind"] == "episode")
    assert all(t is None or t.startswith(("Output:", "Question:")) for t in episode["texts"])


def test_interleaved_to_text_chunks():
    a, b = "A", "B"
    text, media = interleaved_to_text([None, a, None, None, b, None], ["title", None, "one", "two", None, "three"])
    assert text == "title <visual>one two<|endofchunk|><visual>three<|endofchunk|>" and media == [a, b]
    assert interleaved_to_text([a, b, None], [None, None, "both"])[0] == "<visual><visual>both<|endofchunk|>"
    assert interleaved_to_text([a], [None], media_token="<image>", endofchunk="|")[0] == "<image>"
    with pytest.raises(ValueError, match="aligned"):
        interleaved_to_text([a], [])


def test_videos_are_real_mp4s_decord_reads_back(corpora):
    row = corpora["shapes-videos"]["train"][0]
    assert row["video"].endswith(".mp4") and row["num_frames"] == 8
    frames = read_video(row["video"], num_frames=8)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    import decord

    assert len(decord.VideoReader(row["video"])) == 8
    clip = scenes.Clip(row["colour"], row["shape"], row["background"], tuple(row["events"]))
    assert clip.caption == row["text"]
    expected = scenes.render_clip(clip, 8, 32).astype(int)
    assert np.abs(frames.astype(int) - expected).mean() < 6  # lossy codec, same picture
    doc = corpora["shapes-video-interleaved"]["train"][0]
    assert len(doc["videos"]) == len(doc["texts"]) == doc["text"].count("<visual>") >= 2
    assert read_video(doc["videos"][-1], num_frames=4).shape == (4, 32, 32, 3)


def test_moved_cache_rewrites_video_paths(corpora, cache, tmp_path):
    source = corpus_dir("shapes-videos", cache, 0, **SMALL["shapes-videos"])
    shutil.copytree(source, tmp_path / source.name)
    moved = load_embedded_dataset("shapes-videos", cache_dir=tmp_path, **SMALL["shapes-videos"])
    assert all(p.startswith(str(tmp_path)) for p in moved["test"]["video"])
    assert read_video(moved["test"][0]["video"], num_frames=2).shape == (2, 32, 32, 3)


def test_clip_motion_is_visible_in_time():
    clip = scenes.Clip("red", "square", "black", ("moves right",))
    frames = scenes.render_clip(clip, 8, 32)
    xs = [np.nonzero(f[..., 0].max(axis=0) > 100)[0].mean() for f in frames]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 8
    appear = scenes.render_clip(scenes.Clip("red", "circle", "black", ("appears", "grows")), 8, 32)
    areas = [(f[..., 0] > 100).sum() for f in appear]
    assert areas[0] == 0 and areas[3] > 0 and areas[-1] > areas[3]
    assert scenes.Clip("orange", "ring", "gray", ("appears", "grows")).caption == \
        "an orange ring appears then grows, gray background"
