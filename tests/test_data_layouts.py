"""Every image-text layout, written the way its producer writes it, loads through `load_any`, trains through the
real `VLCollator` and evaluates through the real evaluation functions (one decode path); two layouts run
`examples/pretrain.py` end to end."""

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw

from cosmo_vl import evaluation
from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.presets import get_config, get_processor
from cosmo_vl.processing import (
    CaptionChoice,
    LayoutError,
    VLCollator,
    caption_references,
    load_any,
    load_media,
    one_caption_per_sample,
    retrieval_targets,
)
from cosmo_vl.trainers import blip2_recipe, simvlg_recipe

from script_loading import load_script

pretrain = load_script("examples/pretrain.py", "pretrain_layouts")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square")
N = 12  # images per layout, 32x32
FORMATS = ("PNG", "JPEG", "WEBP")


def _draw(i: int) -> tuple[Image.Image, str, list[str]]:
    """Image i (a shape on a coloured background), its caption and its three COCO-style captions."""
    colour = list(COLOURS)[i % len(COLOURS)]
    shape = SHAPES[(i // len(COLOURS)) % 2]
    image = Image.new("RGB", (32, 32), COLOURS[colour])
    box = (8 + i % 4, 8, 24, 24 - i % 3)
    (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=(128, 128, 128))
    captions = [f"a {shape} on {colour} number {i}", f"image {i}: grey {shape}, {colour} background",
                f"{colour} picture {i} with a {shape}"]
    return image, captions[0], captions


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


ROWS = [_draw(i) for i in range(N)]
ENCODED = [_encode(image, FORMATS[i % 3]) for i, (image, _, _) in enumerate(ROWS)]
DECODED = {i: Image.open(io.BytesIO(b)).convert("RGB") for i, b in enumerate(ENCODED)}  # independent decode
CAPTIONS = [caption for _, caption, _ in ROWS]
COCO = [captions for _, _, captions in ROWS]


def _index_of(text) -> int:
    """The image a caption (or list of captions) describes: captions name their number."""
    first = text if isinstance(text, str) else text[0]
    return int(next(w for w in first.replace(":", " ").split() if w.isdigit()))


# ------------------------------------------------------------------------------------------------------ writers
def write_hf_image_parquet(root):
    data = Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in ENCODED], "text": CAPTIONS})
    data.cast_column("image", ImageFeature()).to_parquet(str(root / "hf.parquet"))
    return root / "hf.parquet", {}


def write_struct_parquet(root):  # pyarrow, no datasets schema metadata
    images = pa.array([{"bytes": b, "path": f"{i}.img"} for i, b in enumerate(ENCODED)],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "caption": CAPTIONS}), root / "struct.parquet")
    return root / "struct.parquet", {}


def write_binary_parquet(root):
    pq.write_table(pa.table({"img": pa.array(ENCODED, pa.binary()), "text": CAPTIONS}), root / "binary.parquet")
    return root / "binary.parquet", {"image_column": "img"}


def _image_files(folder) -> list[str]:
    folder.mkdir(exist_ok=True)
    names = []
    for i, data in enumerate(ENCODED):
        names.append(f"{i:03d}.{FORMATS[i % 3].lower()}")
        (folder / names[-1]).write_bytes(data)
    return names


def write_relative_path_parquet(root):
    names = _image_files(root / "images")
    pd.DataFrame({"file": [f"images/{n}" for n in names], "text": CAPTIONS}).to_parquet(root / "rel.parquet")
    return root / "rel.parquet", {"image_column": "file"}


def write_absolute_path_parquet(root):
    names = _image_files(root / "elsewhere")
    (root / "meta").mkdir()
    paths = [str(root / "elsewhere" / n) for n in names]
    pd.DataFrame({"image_path": paths, "sentence": CAPTIONS}).to_parquet(root / "meta" / "abs.parquet")
    return root / "meta" / "abs.parquet", {}


def _struct_shard(path, rows: range, text_column="text", text=CAPTIONS):
    images = [{"bytes": ENCODED[i], "path": None} for i in rows]
    pq.write_table(pa.table({"image": images, text_column: [text[i] for i in rows]}), path)


def write_hub_folder(root):  # data/train-0000k-of-00002.parquet + data/test-00000-of-00001.parquet
    (root / "repo" / "data").mkdir(parents=True)
    (root / "repo" / "README.md").write_text("---\nlicense: mit\n---\n")
    _struct_shard(root / "repo" / "data" / "train-00000-of-00002.parquet", range(0, 5))
    _struct_shard(root / "repo" / "data" / "train-00001-of-00002.parquet", range(5, 9))
    _struct_shard(root / "repo" / "data" / "test-00000-of-00001.parquet", range(9, N))
    return root / "repo", {}


def write_coco_parquet(root):  # pandas, several captions per image
    frame = pd.DataFrame({"image": [{"bytes": b, "path": None} for b in ENCODED], "captions": COCO})
    frame.to_parquet(root / "coco.parquet")
    return root / "coco.parquet", {}


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _webdataset(root, fmt: str, caption: str):
    (root / "shards").mkdir()
    for shard, rows in enumerate((range(0, 6), range(6, N))):
        members = {}
        for i in rows:
            members[f"{i:05d}.{fmt.lower().replace('jpeg', 'jpg')}"] = _encode(ROWS[i][0], fmt)
            if caption == "txt":
                members[f"{i:05d}.txt"] = CAPTIONS[i].encode()
            else:
                members[f"{i:05d}.json"] = json.dumps({"key": f"{i:05d}", "caption": CAPTIONS[i]}).encode()
        _tar(root / "shards" / f"{shard:06d}.tar", members)
    return root / "shards", ({"text_column": "caption"} if caption == "json" else {})


LAYOUTS = {
    "hf_image_parquet": write_hf_image_parquet,
    "struct_parquet": write_struct_parquet,
    "binary_parquet": write_binary_parquet,
    "relative_path_parquet": write_relative_path_parquet,
    "absolute_path_parquet": write_absolute_path_parquet,
    "hub_data_folder": write_hub_folder,
    "coco_caption_lists": write_coco_parquet,
    "webdataset_png_txt": lambda root: _webdataset(root, "PNG", "txt"),
    "webdataset_jpg_json": lambda root: _webdataset(root, "JPEG", "json"),
    "webdataset_webp_json": lambda root: _webdataset(root, "WEBP", "json"),
}


@pytest.fixture(scope="module")
def processor():
    return get_processor("cosmo-tiny")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CosmoForConditionalGeneration(get_config("cosmo-tiny")).eval()


# ------------------------------------------------------------------------------------------------ every layout
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_trains_and_evaluates(layout, tmp_path, processor, model):
    path, columns = LAYOUTS[layout](tmp_path)
    data = load_any(path, **columns)
    assert set(data) == ({"train", "test"} if layout == "hub_data_folder" else {"train"})
    rows = [row for split in data.values() for row in split]
    assert len(rows) == N
    undecoded = [split.cast_column("image", ImageFeature(decode=False)) for split in data.values()]
    raw = [record for split in undecoded for record in split["image"]]  # {"bytes", "path"} records
    for row in rows:  # each image decodes to the pixels its producer wrote, next to its own caption(s)
        i = _index_of(row["text"])
        assert np.array_equal(np.asarray(row["image"]), np.asarray(_expected(layout, i))), i
        assert row["text"] == (COCO[i] if layout == "coco_caption_lists" else CAPTIONS[i])

    streamed = next(iter(load_any(path, streaming=True, **columns)["train"]))  # the same rows, read lazily
    assert np.array_equal(np.asarray(streamed["image"]), np.asarray(_expected(layout, _index_of(streamed["text"]))))

    # Training: the real collator on one caption per sample.
    train = one_caption_per_sample(data["train"], seed=0)
    batch = VLCollator(processor, on_error="raise")([train[i] for i in range(4)])
    expected = [[_expected(layout, _index_of(train[i]["text"]))] for i in range(4)]
    reference = processor(text=[train[i]["text"] for i in range(4)], media=expected, return_tensors="pt")
    assert batch["pixel_values"].shape[:3] == (4, 1, 1)
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])

    # Evaluation: the raw records (what the collator also reads) embed exactly as the decoded images.
    from_records = evaluation.image_embeddings(model, processor, raw[:4], progress=False)
    from_pil = evaluation.image_embeddings(model, processor, [r["image"] for r in rows[:4]], progress=False)
    assert from_records.shape == (4, model.config.contrastive_dim) and torch.allclose(from_records, from_pil)
    texts = [r["text"] for r in rows[:4]]
    scores = evaluation.captioning(model, processor, raw[:4], caption_references(texts), max_new_tokens=3,
                                   progress=False)
    assert len(scores["predictions"]) == 4 and 0.0 <= scores["exact_match"] <= 1.0


def _expected(layout: str, i: int) -> Image.Image:
    """Image i as its producer encoded it, decoded by PIL directly (the shards encode each image in their format)."""
    fmt = {"webdataset_png_txt": "PNG", "webdataset_jpg_json": "JPEG", "webdataset_webp_json": "WEBP"}.get(layout)
    return Image.open(io.BytesIO(_encode(ROWS[i][0], fmt))).convert("RGB") if fmt else DECODED[i]


def test_raw_values_as_their_producer_wrote_them_evaluate(tmp_path, model, processor):
    """pyarrow's own values (struct dicts, raw bytes, path strings) go through the collator's decoder."""
    path, _ = write_struct_parquet(tmp_path)
    structs = pq.read_table(path).column("image").to_pylist()[:3]
    binary = [ENCODED[i] for i in range(3)]
    names = _image_files(tmp_path / "files")[:3]
    paths = [str(tmp_path / "files" / n) for n in names]
    frames = np.stack([np.asarray(DECODED[i]) for i in range(3)])  # (3, 32, 32, 3)
    expected = evaluation.image_embeddings(model, processor, [DECODED[i] for i in range(3)], progress=False)
    for items in (structs, binary, paths, list(frames)):
        assert torch.allclose(evaluation.image_embeddings(model, processor, items, progress=False), expected)
    video = load_media(frames)  # a (F, H, W, 3) stack is a video, as in the collator's video column
    assert isinstance(video, np.ndarray) and video.shape == (3, 32, 32, 3)


# --------------------------------------------------------------------------------------- several captions per image
def test_caption_choice_is_seeded_per_epoch_and_index(tmp_path):
    data = load_any(write_coco_parquet(tmp_path)[0])["train"]
    first, again, other_seed = CaptionChoice(data, seed=3), CaptionChoice(data, seed=3), CaptionChoice(data, seed=4)

    def draws(view, epoch):
        view.set_epoch(epoch)
        return [row["text"] for row in view.__getitems__(list(range(N)))]

    epoch0, epoch1 = draws(first, 0), draws(first, 1)
    assert all(text in COCO[i] for draws_ in (epoch0, epoch1) for i, text in enumerate(draws_))
    assert epoch0 != epoch1  # a new epoch draws other captions for some samples
    assert draws(again, 0) == epoch0 and draws(again, 1) == epoch1  # same seed: same draws, in any process
    assert [first[i]["text"] for i in range(N)] == epoch1  # __getitem__ and __getitems__ agree
    assert draws(other_seed, 0) != epoch0
    assert len({text for e in range(8) for text in draws(first, e)}) > N  # over epochs, more than one per image
    assert first.column_names == data.column_names and len(first) == N
    streamed = one_caption_per_sample(load_any(tmp_path / "coco.parquet", streaming=True)["train"], seed=3)
    assert all(row["text"] in COCO[i] for i, row in enumerate(streamed))
    plain = load_any(write_struct_parquet(tmp_path)[0])["train"]
    assert one_caption_per_sample(plain) is plain


def test_epoch_reaches_the_caption_draw_under_ddp(tmp_path):
    """With two processes accelerate hands the epoch to its seedable sampler only, not to the dataset: the
    trainers' `DatasetEpochCallback` does."""
    from types import SimpleNamespace

    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from cosmo_vl.trainers import DatasetEpochCallback
    from cosmo_vl.trainers.vlp_options import IndexedDataset

    view = CaptionChoice(load_any(write_coco_parquet(tmp_path)[0])["train"], seed=0)
    loader = prepare_data_loader(DataLoader(IndexedDataset(view), batch_size=2, shuffle=True), num_processes=2,
                                 process_index=0, put_on_device=False, use_seedable_sampler=True)
    loader.set_epoch(1)
    assert view.epoch == 0  # what the callback is for
    for state_epoch, expected in ((1.0, 1), (2.5, 2), (0.0, 0)):  # 2.5: resumed in the middle of epoch 2
        DatasetEpochCallback().on_epoch_begin(None, SimpleNamespace(epoch=state_epoch), None, train_dataloader=loader)
        assert view.epoch == expected


def test_all_captions_are_references(tmp_path, monkeypatch):
    data = load_any(write_coco_parquet(tmp_path)[0])["train"]
    assert caption_references(data["text"]) == COCO
    texts, targets = retrieval_targets(data["text"])
    assert [sorted(texts[j] for j in t) for t in targets] == [sorted(c) for c in COCO]
    # The recipes' own evaluations: a model that always answers the third caption matches only with all references.
    monkeypatch.setattr(blip2_recipe, "generate_captions", lambda blip2, processor, images: [c[2] for c in COCO])
    assert blip2_recipe.evaluate_split(None, None, data, N)["exact_match"] == 1.0
    monkeypatch.setattr(evaluation, "generate_texts", lambda *args, **kwargs: [c[2] for c in COCO])
    result = simvlg_recipe.evaluate_split(None, None, data, N, num_frames=2)
    assert result["exact_match"] == 1.0 and result["examples"][0]["reference"] == COCO[0]


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("streaming", [False, True])
def test_url_column_is_refused_at_load_time(tmp_path, streaming, monkeypatch):
    import fsspec

    def no_fetch(*args, **kwargs):
        raise AssertionError("nothing may be fetched")

    monkeypatch.setattr(fsspec, "open", no_fetch)
    urls = [f"https://example.com/{i}.jpg" for i in range(4)]
    pd.DataFrame({"url": urls, "caption": CAPTIONS[:4]}).to_parquet(tmp_path / "urls.parquet")
    with pytest.raises(LayoutError, match=r"image column 'url' holds URLs.*https://example.com/0.jpg.*img2dataset"):
        load_any(tmp_path / "urls.parquet", image_column="url", streaming=streaming)
    records = [{"bytes": None, "path": f"s3://bucket/{i}.jpg"} for i in range(4)]
    pq.write_table(pa.table({"image": records, "text": CAPTIONS[:4]}), tmp_path / "s3.parquet")
    with pytest.raises(LayoutError, match=r"holds URLs.*s3://bucket/0.jpg.*download"):
        load_any(tmp_path / "s3.parquet", streaming=streaming)


def test_unknown_layout_lists_what_was_found(tmp_path):
    pd.DataFrame({"pixels": [1, 2], "label": ["a", "b"]}).to_parquet(tmp_path / "odd.parquet")
    with pytest.raises(LayoutError, match=r"no image column 'image'.*pixels: Value\('int64'\).*label: Value\("
                                          r"'(large_)?string'\).*--image_column.*\{bytes, path\}.*--text_column"):
        load_any(tmp_path / "odd.parquet")
    with pytest.raises(LayoutError, match=r"image column 'pixels' holds neither.*pixels: Value\('int64'\)"):
        load_any(tmp_path / "odd.parquet", image_column="pixels", text_column="label")
    pd.DataFrame({"image": [str(tmp_path / "odd.parquet")], "text": [3]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(LayoutError, match=r"text column 'text' holds neither strings nor lists of strings"):
        load_any(tmp_path / "t.parquet")
    pd.DataFrame({"image": ["missing/a.png"], "text": ["t"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(LayoutError, match=r"none of the first ones exists.*missing/a.png.*media_root"):
        load_any(tmp_path / "m.parquet")


# ---------------------------------------------------------------------------------------- examples/pretrain.py
class RecordingCollator(VLCollator):
    """The script's collator, recording the captions of every batch it builds."""

    batches: list = []

    def __call__(self, examples):
        RecordingCollator.batches.append([example["text"] for example in examples])
        return super().__call__(examples)


def _pretrain(tmp_path, dataset, *extra) -> dict:
    out = tmp_path / "out"
    argv = ["--dataset", str(dataset), "--output_dir", str(out), "--max_steps", "2", "--max_eval_samples", "8",
            "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "true", "--warmup_steps", "0", *extra]
    assert pretrain.main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert json.loads((out / "final" / "eval_results.json").read_text()) == results
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "README.md").is_file()
    assert results["skipped_samples"] == {}
    for key in ("cider", "bleu4", "exact_match", "i2t_r1", "t2i_r1"):
        assert np.isfinite(results[key]), key
    return results


def test_pretrain_end_to_end_struct_parquet(tmp_path):
    path, _ = write_struct_parquet(tmp_path)
    results = _pretrain(tmp_path, path, "--num_threads", "2")
    assert results["num_samples"] == 2  # no test split: 10% of the 12 rows held out (rounded up)
    assert [ex["reference"] for ex in results["examples"]][0] in CAPTIONS


def test_pretrain_end_to_end_coco_lists(tmp_path, monkeypatch):
    (tmp_path / "coco" / "data").mkdir(parents=True)
    _struct_shard(tmp_path / "coco" / "data" / "train-00000-of-00001.parquet", range(0, 4), "captions", COCO)
    _struct_shard(tmp_path / "coco" / "data" / "test-00000-of-00001.parquet", range(4, N), "captions", COCO)
    seen = {}
    retrieval = evaluation.retrieval
    monkeypatch.setattr(pretrain.evaluation, "retrieval", lambda model, processor, media, texts, **kw: seen.update(
        texts=texts, image_to_text=kw["image_to_text"]) or retrieval(model, processor, media, texts, **kw))
    RecordingCollator.batches = []
    monkeypatch.setattr(pretrain, "VLCollator", RecordingCollator)
    results = _pretrain(tmp_path, tmp_path / "coco")  # 4 training rows, batch 4: each step is one epoch
    epochs = [sorted(batch, key=_index_of) for batch in RecordingCollator.batches]
    assert len(epochs) == 2 and all(text in COCO[_index_of(text)] for batch in epochs for text in batch)
    assert sorted(_index_of(t) for t in epochs[0]) == [0, 1, 2, 3] and epochs[0] != epochs[1]
    assert results["num_samples"] == 8 and [ex["reference"] for ex in results["examples"]] == COCO[4:N]
    positives = [sorted(seen["texts"][j] for j in targets) for targets in seen["image_to_text"]]
    assert positives == [sorted(c) for c in COCO[4:N]]  # every caption of an image is a positive
