"""Embedded generated corpora: shape scenes, clips and documents, built deterministically from a seed in seconds.

`load_embedded_dataset(name)` returns a `datasets.DatasetDict`, saved with `save_to_disk` under
``$COSMO_VL_CACHE`` (or ``~/.cache/cosmo_vl/datasets``) ``/<name>-v<version>-<seed>[-<options hash>]`` and reloaded
with `load_from_disk` afterwards. Video corpora keep their mp4 files (H.264, or MPEG-4 without libx264) in the
same folder.

Corpora (splits: `train`; `test` = only held-out combinations, see `processing.scenes`; `test_iid` = new samples
of the training combinations where noted):
    shapes-captions           image, text, label, colour, shape, size, position, count, background, objects
                              (+ test_iid). `label` indexes `zero_shot_classes(name)` ("a red circle") for
                              one-group scenes and is -1 for two-group scenes.
    shapes-vqa                image, question, answer, question_type, text ("Question:q Short answer:a"),
                              colour, shape, background (+ test_iid).
    shapes-interleaved        OBELICS-aligned images / texts (position i holds an image or a text), the flattened
                              text with <visual> placeholders, kind ("document" or few-shot "episode"), task.
    shapes-videos             video (mp4 path), text, colour, shape, background, events, num_frames, fps.
    shapes-video-interleaved  videos (ordered mp4 paths), texts (one detailed caption per clip), text (flattened),
                              summary, colour, shape, background, events.
"""

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image, List, Value, load_from_disk

from . import scenes
from .scenes import HELD_OUT_EVENTS, HELD_OUT_PAIRS, NUMBER_WORDS, PLURALS, POSITION_PHRASES
from .video import write_video

VERSION = "1"
MEDIA_TOKEN = "<visual>"
ENDOFCHUNK_TOKEN = "<|endofchunk|>"

EMBEDDED_DATASETS: dict[str, dict] = {
    "shapes-captions": {"num_train": 20000, "num_test": 500, "image_size": 32, "two_groups": 0.0},
    "shapes-vqa": {"num_train": 2000, "num_test": 400, "image_size": 32, "two_groups": 0.25},
    "shapes-interleaved": {"num_train": 500, "num_test": 100, "image_size": 32, "max_images": 4, "episodes": 0.5},
    "shapes-videos": {"num_train": 400, "num_test": 100, "image_size": 32, "num_frames": 8, "fps": 8},
    "shapes-video-interleaved": {"num_train": 100, "num_test": 25, "image_size": 32, "num_frames": 8, "fps": 8,
                                 "max_clips": 4},
}


# ------------------------------------------------------------------------------------------------------ helpers
def interleaved_to_text(images: Sequence, texts: Sequence, media_token: str = MEDIA_TOKEN,
                        endofchunk: str = ENDOFCHUNK_TOKEN) -> tuple[str, list]:
    """OBELICS/MMC4-aligned lists (position i holds an image or a text) -> (text, images).

    Each image opens a chunk ``<visual>text...<|endofchunk|>`` that closes before the next image (consecutive
    images share a chunk); text before the first image is kept as a plain prefix. `images` keeps the image order.
    """
    if len(images) != len(texts):
        raise ValueError(f"images and texts must be aligned, got {len(images)} images and {len(texts)} texts")
    out, media, words, in_chunk = [], [], [], False

    def flush():
        if words:
            out.append(" ".join(words) + (endofchunk if in_chunk else " "))
            words.clear()

    for image, text in zip(images, texts):
        if image is not None:
            flush()
            out.append(media_token)
            media.append(image)
            in_chunk = True
        if text is not None and text.strip():
            words.append(text.strip())
    flush()
    return "".join(out), media


def flatten_interleaved(dataset, media_token: str = MEDIA_TOKEN, endofchunk: str = ENDOFCHUNK_TOKEN):
    """Map OBELICS `images` / `texts` columns to the processor's form: `text` with placeholders and `images`
    without the None slots."""

    def convert(example):
        text, media = interleaved_to_text(example["images"], example["texts"], media_token, endofchunk)
        return {"text": text, "images": media}

    return dataset.map(convert, remove_columns=["texts"])


def zero_shot_classes(name: str) -> list[str] | None:
    """Class names of the `label` column of an embedded corpus, or None when it has none."""
    return scenes.class_names() if name == "shapes-captions" else None


def zero_shot_prompts(name: str) -> list[list[str]] | None:
    """Per class of `zero_shot_classes(name)`, its prompt ensemble (every caption of a one-group scene of that
    colour and shape), or None for corpora without classes."""
    if name != "shapes-captions":
        return None
    return [scenes.class_prompts(c, s) for c in scenes.COLOURS for s in scenes.SHAPES]


def held_out_combinations(name: str) -> list[tuple[str, str]]:
    """The combinations that only the `test` split of corpus `name` shows: colour x shape pairs for image
    corpora, shape x event pairs for video corpora."""
    if name not in EMBEDDED_DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; available: {', '.join(EMBEDDED_DATASETS)}")
    return sorted(HELD_OUT_EVENTS if "video" in name else HELD_OUT_PAIRS)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the cached corpora: `cache_dir`, else $COSMO_VL_CACHE, else ~/.cache/cosmo_vl/datasets."""
    root = cache_dir or os.environ.get("COSMO_VL_CACHE") or Path.home() / ".cache" / "cosmo_vl" / "datasets"
    return Path(root).expanduser().absolute()


def corpus_dir(name: str, cache_dir=None, seed: int = 0, **options) -> Path:
    """Cache folder of corpus `name`; options that differ from the defaults add a short hash to the name."""
    defaults = EMBEDDED_DATASETS[name]
    changed = {k: v for k, v in sorted(options.items()) if v is not None and defaults.get(k) != v}
    tag = "-" + hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8] if changed else ""
    return cache_root(cache_dir) / f"{name}-v{VERSION}-{seed}{tag}"


def load_embedded_dataset(name: str, cache_dir=None, seed: int = 0, num_train: int | None = None,
                          num_test: int | None = None, **options) -> DatasetDict:
    """Embedded corpus `name` (a key of `EMBEDDED_DATASETS`), generated on first use and cached on disk.

    `num_train` / `num_test` and the options of `EMBEDDED_DATASETS[name]` (image_size, num_frames, ...) change
    the corpus; the same arguments always give the same data."""
    if name not in EMBEDDED_DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; available: {', '.join(EMBEDDED_DATASETS)}")
    unknown = set(options) - set(EMBEDDED_DATASETS[name])
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {sorted(unknown)}; known: {sorted(EMBEDDED_DATASETS[name])}")
    params = {**EMBEDDED_DATASETS[name], **{k: v for k, v in options.items() if v is not None}}
    params.update({k: v for k, v in (("num_train", num_train), ("num_test", num_test)) if v is not None})
    path = corpus_dir(name, cache_dir, seed, **params)
    if not (path / "dataset_dict.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            data = _BUILDERS[name](random_for(name, seed), media=_Media(tmp, path), **params)
            data.save_to_disk(str(tmp))
            (tmp / "corpus.json").write_text(json.dumps({"name": name, "seed": seed, "version": VERSION,
                                                         "params": params, "root": str(path)}))
            try:
                os.replace(tmp, path)
            except OSError:  # built concurrently by another process: theirs is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _relocate(load_from_disk(str(path)), path)


def random_for(name: str, seed: int) -> Callable[[str], random.Random]:
    """Per-split random generators, independent of each other and of the split sizes of other splits."""
    return lambda split: random.Random(f"{name}/{seed}/{split}")


class _Media:
    """Media files are written under `tmp` but named by their final path under `root`."""

    def __init__(self, tmp: Path, root: Path):
        self.tmp, self.root = tmp, root

    def write_video(self, relative: str, frames, fps: int) -> str:
        target = self.tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        write_video(target, frames, fps=fps)
        return str(self.root / relative)


def _relocate(data: DatasetDict, path: Path) -> DatasetDict:
    """Rewrite media paths when the cache folder was moved since it was built."""
    meta = path / "corpus.json"
    old = json.loads(meta.read_text())["root"] if meta.exists() else str(path)
    if old == str(path):
        return data

    def fix(p):
        return str(path) + p[len(old):] if p.startswith(old) else p

    def remap(example):
        out = {}
        if "video" in example:
            out["video"] = fix(example["video"])
        if "videos" in example:
            out["videos"] = [fix(p) for p in example["videos"]]
        return out

    columns = next(iter(data.values())).column_names
    return data.map(remap) if {"video", "videos"} & set(columns) else data


def _dataset(rows: list[dict], features: Features, name: str) -> Dataset:
    held = ", ".join(" ".join(p) for p in held_out_combinations(name))
    info = DatasetInfo(description=f"cosmo-vl embedded corpus {name} v{VERSION}; the test split holds out: {held}",
                       license="Apache-2.0", features=features)
    return Dataset.from_list(rows, features=features, info=info)


# ------------------------------------------------------------------------------------------------ image corpora
_GROUP = {"colour": Value("string"), "shape": Value("string"), "size": Value("string"),
          "position": Value("string"), "count": Value("int32")}

_SPLITS = {"train": False, "test": True, "test_iid": False}


def _build_captions(rng_for, media, num_train, num_test, image_size, two_groups) -> DatasetDict:
    features = Features({"image": Image(), "text": Value("string"), "label": ClassLabel(names=scenes.class_names()),
                         **{k: v for k, v in _GROUP.items()}, "background": Value("string"), "objects": List(_GROUP)})
    names = scenes.class_names()
    out = {}
    for split, held_out in _SPLITS.items():
        rng = rng_for(split)
        rows = []
        for _ in range(num_train if split == "train" else num_test):
            scene = scenes.random_scene(rng, held_out, two_groups)
            first = scene.groups[0]
            rows.append({"image": scenes.draw_scene(scene, rng, image_size), "text": scene.caption,
                         "label": names.index(scene.class_name) if scene.class_name else -1, **asdict(first),
                         "background": scene.background, "objects": [asdict(g) for g in scene.groups]})
        out[split] = _dataset(rows, features, "shapes-captions")
    return DatasetDict(out)


def _noun(group) -> str:
    return f"{group.colour} {group.shape if group.count == 1 else PLURALS[group.shape]}"


def vqa_questions(scene: scenes.Scene, rng: random.Random, held_out: bool) -> list[tuple[str, str, str]]:
    """Unambiguous (question_type, question, answer) triples about `scene`."""
    qs = [("background", "what color is the background?", scene.background)]
    for g in scene.groups:
        be = "is" if g.count == 1 else "are"
        qs += [("colour", f"what color is the {g.shape}?" if g.count == 1 else
                f"what color are the {PLURALS[g.shape]}?", g.colour),
               ("shape", f"what shape is {POSITION_PHRASES[g.position]}?", g.shape),
               ("count", f"how many {PLURALS[g.shape]} are there?", NUMBER_WORDS[g.count]),
               ("size", f"what size {be} the {_noun(g)}?", g.size),
               ("position", f"where {be} the {_noun(g)}?", g.position),
               ("exists", f"is there {scenes.class_name(g.colour, g.shape)}?", "yes")]
    present = {(g.colour, g.shape) for g in scene.groups}
    pool = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES
            if (c, s) not in present and (held_out or (c, s) not in HELD_OUT_PAIRS)]
    c, s = rng.choice(pool)
    qs.append(("exists", f"is there {scenes.class_name(c, s)}?", "no"))
    return qs


def _build_vqa(rng_for, media, num_train, num_test, image_size, two_groups) -> DatasetDict:
    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string"),
                         "question_type": Value("string"), "text": Value("string"), "colour": Value("string"),
                         "shape": Value("string"), "background": Value("string"), "objects": List(_GROUP)})
    out = {}
    for split, held_out in _SPLITS.items():
        rng = rng_for(split)
        rows = []
        for _ in range(num_train if split == "train" else num_test):
            scene = scenes.random_scene(rng, held_out, two_groups)
            image = scenes.draw_scene(scene, rng, image_size)
            qs = vqa_questions(scene, rng, held_out)
            kind = rng.choice(sorted({q[0] for q in qs}))
            kind, question, answer = rng.choice([q for q in qs if q[0] == kind])
            first = scene.groups[0]
            rows.append({"image": image, "question": question, "answer": answer, "question_type": kind,
                         "text": f"Question:{question} Short answer:{answer}", "colour": first.colour,
                         "shape": first.shape, "background": scene.background,
                         "objects": [asdict(g) for g in scene.groups]})
        out[split] = _dataset(rows, features, "shapes-vqa")
    return DatasetDict(out)


_EPISODE_TASKS = {
    "caption": lambda scene: f"Output:{scene.caption}",
    "colour": lambda scene: f"Question:what color is the shape? Short answer:{scene.groups[0].colour}",
    "shape": lambda scene: f"Question:what shape is it? Short answer:{scene.groups[0].shape}",
    "count": lambda scene: f"Question:how many shapes are there? Short answer:{NUMBER_WORDS[scene.groups[0].count]}",
}


def _build_interleaved(rng_for, media, num_train, num_test, image_size, max_images, episodes) -> DatasetDict:
    features = Features({"images": List(Image()), "texts": List(Value("string")), "text": Value("string"),
                         "kind": Value("string"), "task": Value("string"), "num_images": Value("int32")})
    out = {}
    for split in ("train", "test"):
        rng, held_out = rng_for(split), split == "test"
        rows = []
        for _ in range(num_train if split == "train" else num_test):
            images, texts = [], []
            n = rng.randint(2, max(2, max_images))
            if rng.random() < episodes:  # few-shot episode: shots of one task, then the query with its answer
                kind, task = "episode", rng.choice(sorted(_EPISODE_TASKS))
                for k in range(n):
                    scene = scenes.random_scene(rng, held_out and k == n - 1, two_groups=0.0)
                    images += [scenes.draw_scene(scene, rng, image_size), None]
                    texts += [None, _EPISODE_TASKS[task](scene)]
            else:  # document: an optional title, then pictures each followed by its caption
                kind, task = "document", "caption"
                if rng.random() < 0.5:
                    images.append(None)
                    texts.append(f"{NUMBER_WORDS.get(n, str(n))} pictures of shapes.")
                for _ in range(n):
                    scene = scenes.random_scene(rng, held_out)
                    images += [scenes.draw_scene(scene, rng, image_size), None]
                    texts += [None, scene.caption + "."]
            text, _ = interleaved_to_text(images, texts)
            rows.append({"images": images, "texts": texts, "text": text, "kind": kind, "task": task, "num_images": n})
        out[split] = _dataset(rows, features, "shapes-interleaved")
    return DatasetDict(out)


# ------------------------------------------------------------------------------------------------ video corpora
def _build_videos(rng_for, media, num_train, num_test, image_size, num_frames, fps) -> DatasetDict:
    features = Features({"video": Value("string"), "text": Value("string"), "colour": Value("string"),
                         "shape": Value("string"), "background": Value("string"), "events": List(Value("string")),
                         "num_frames": Value("int32"), "fps": Value("int32")})
    out = {}
    for split in ("train", "test"):
        rng, rows = rng_for(split), []
        for i in range(num_train if split == "train" else num_test):
            clip = scenes.random_clip(rng, held_out=split == "test")
            frames = scenes.render_clip(clip, num_frames, image_size)
            path = media.write_video(f"videos/{split}/{i:06d}.mp4", frames, fps)
            rows.append({"video": path, "text": clip.caption, "colour": clip.colour, "shape": clip.shape,
                         "background": clip.background, "events": list(clip.events), "num_frames": num_frames,
                         "fps": fps})
        out[split] = _dataset(rows, features, "shapes-videos")
    return DatasetDict(out)


def _ordinal(k: int, n: int) -> str:
    return "first" if k == 0 else "finally" if k == n - 1 else ("next" if k % 2 else "then")


def _build_video_interleaved(rng_for, media, num_train, num_test, image_size, num_frames, fps, max_clips):
    features = Features({"videos": List(Value("string")), "texts": List(Value("string")), "text": Value("string"),
                         "summary": Value("string"), "colour": Value("string"), "shape": Value("string"),
                         "background": Value("string"), "events": List(Value("string"))})
    out = {}
    for split in ("train", "test"):
        rng, rows = rng_for(split), []
        for i in range(num_train if split == "train" else num_test):
            base = scenes.random_clip(rng, num_events=1)
            n = rng.randint(2, max(2, max_clips))
            special = rng.randrange(n) if split == "test" else -1  # the clip that shows a held-out pair
            videos, texts, events = [], [], []
            for k in range(n):
                clip = scenes.random_clip(rng, held_out=k == special, num_events=1, shape=base.shape,
                                          colour=base.colour, background=base.background)
                frames = scenes.render_clip(clip, num_frames, image_size)
                videos.append(media.write_video(f"videos/{split}/{i:06d}-{k}.mp4", frames, fps))
                events.append(clip.events[0])
                texts.append(f"{_ordinal(k, n)}, the {clip.colour} {clip.shape} {clip.events[0]} "
                             f"on the {clip.background} background.")
            text = "".join(f"{MEDIA_TOKEN}{t}{ENDOFCHUNK_TOKEN}" for t in texts)
            summary = (f"{scenes.class_name(base.colour, base.shape)} {', then '.join(events)}, "
                       f"{base.background} background")
            rows.append({"videos": videos, "texts": texts, "text": text, "summary": summary, "colour": base.colour,
                         "shape": base.shape, "background": base.background, "events": events})
        out[split] = _dataset(rows, features, "shapes-video-interleaved")
    return DatasetDict(out)


_BUILDERS = {
    "shapes-captions": _build_captions,
    "shapes-vqa": _build_vqa,
    "shapes-interleaved": _build_interleaved,
    "shapes-videos": _build_videos,
    "shapes-video-interleaved": _build_video_interleaved,
}
