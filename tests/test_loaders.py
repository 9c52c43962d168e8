"""User-data loaders on small files in each layout: schema, custom columns, streaming, clear errors."""

import io
import json
import tarfile

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, Features, Image, IterableDataset, List, Value
from PIL import Image as PILImage

from cosmo_vl.processing.loaders import (
    detect_format,
    load_any,
    load_image_text,
    load_interleaved,
    load_interleaved_video,
    load_video_text,
)
from cosmo_vl.processing.video import read_video, write_video

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def encoded(colour: str, fmt: str = "PNG", size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, COLOURS[colour]).save(buf, format=fmt)
    return buf.getvalue()


def pixel(image) -> tuple:
    return image.convert("RGB").getpixel((0, 0))


def tar_shard(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.fixture
def imagefolder(tmp_path):
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    for colour in COLOURS:
        (folder / f"{colour}.png").write_bytes(encoded(colour))
    rows = [{"file_name": f"{c}.png", "caption": f"a {c} square"} for c in COLOURS]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_imagefolder_with_metadata_jsonl(imagefolder):
    data = load_image_text(imagefolder, text_column="caption")
    assert isinstance(data, Dataset) and {"image", "text"} <= set(data.column_names)
    assert sorted(data["text"]) == ["a blue square", "a green square", "a red square"]
    for row in data:
        assert pixel(row["image"]) == COLOURS[row["text"].split()[1]]
    assert load_image_text(imagefolder)["text"]  # "caption" is a known alternative of the default "text"
    streamed = load_image_text(imagefolder, text_column="caption", streaming=True)
    assert isinstance(streamed, IterableDataset)
    assert next(iter(streamed))["text"].startswith("a ")
    assert set(load_image_text(imagefolder, split=None)) == {"train"}


def test_imagefolder_with_metadata_csv(tmp_path):
    folder = tmp_path / "csvfolder"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encoded("blue", "JPEG"))
    (folder / "metadata.csv").write_text("file_name,alt\na.jpg,a blue square\n")
    data = load_image_text(folder, text_column="alt")
    assert data[0]["text"] == "a blue square" and data[0]["image"].size == (12, 10)


def test_parquet_file_and_folder_with_custom_columns(tmp_path):
    table = Dataset.from_dict({"img": [{"bytes": encoded(c), "path": None} for c in COLOURS],
                               "cap": list(COLOURS)}).cast_column("img", Image())
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    table.to_parquet(str(tmp_path / "pq" / "part-1.parquet"))
    single = load_image_text(tmp_path / "pq" / "part-0.parquet", image_column="img", text_column="cap")
    assert single["text"] == list(COLOURS) and pixel(single[2]["image"]) == COLOURS["blue"]
    both = load_image_text(tmp_path / "pq", image_column="img", text_column="cap")
    assert len(both) == 6
    streamed = list(load_image_text(tmp_path / "pq", image_column="img", text_column="cap", streaming=True))
    assert len(streamed) == 6 and pixel(streamed[0]["image"]) == COLOURS["red"]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    table = Dataset.from_dict({"picture": [{"bytes": encoded("green"), "path": None}], "words": ["green"]})
    table = table.cast_column("picture", Image())
    table.save_to_disk(str(tmp_path / "single"))
    DatasetDict({"train": table, "validation": table}).save_to_disk(str(tmp_path / "dict"))
    assert detect_format(tmp_path / "single") == detect_format(tmp_path / "dict") == "save_to_disk"
    data = load_image_text(tmp_path / "single", image_column="picture", text_column="words")
    assert data[0]["text"] == "green" and pixel(data[0]["image"]) == COLOURS["green"]
    validation = load_image_text(tmp_path / "dict", "picture", "words", split="validation")
    assert validation[0]["text"] == "green"
    streamed = load_image_text(tmp_path / "dict", "picture", "words", streaming=True)
    assert next(iter(streamed))["text"] == "green"
    with pytest.raises(ValueError, match="no split 'test'.*validation"):
        load_image_text(tmp_path / "dict", "picture", "words", split="test")


def test_csv_of_relative_image_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "r.png").write_bytes(encoded("red"))
    (tmp_path / "pairs.csv").write_text("path,caption\nimgs/r.png,a red one\n")
    data = load_image_text(tmp_path / "pairs.csv", image_column="path")
    assert data[0]["text"] == "a red one" and pixel(data[0]["image"]) == COLOURS["red"]


def test_webdataset_shards_txt_and_json(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    tar_shard(shards / "000000.tar", {"00000.jpg": encoded("red", "JPEG"), "00000.txt": b"caption zero",
                                      "00001.jpg": encoded("blue", "JPEG"), "00001.txt": b"caption one"})
    tar_shard(shards / "000001.tar", {"00002.jpg": encoded("green", "JPEG"), "00002.txt": b"caption two"})
    assert detect_format(shards) == "webdataset"
    data = load_image_text(shards)
    assert sorted(data["text"]) == ["caption one", "caption two", "caption zero"]
    assert data[0]["image"].size == (12, 10)
    streamed = list(load_image_text(shards, streaming=True))
    assert len(streamed) == 3 and all(r["text"].startswith("caption") for r in streamed)

    cc3m = tmp_path / "cc3m"
    cc3m.mkdir()
    tar_shard(cc3m / "000000.tar", {"a.jpg": encoded("green", "JPEG"),
                                    "a.json": json.dumps({"caption": "a green card", "key": "a"}).encode()})
    assert load_image_text(cc3m)[0]["text"] == "a green card"


def test_webvid_csv_and_jsonl(tmp_path):
    (tmp_path / "clips").mkdir()
    frames = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "clips" / "a.mp4", frames)
    (tmp_path / "webvid.csv").write_text("videoid,contentUrl,name\n1,clips/a.mp4,a black screen\n")
    data = load_video_text(tmp_path / "webvid.csv", video_column="contentUrl", text_column="name")
    assert data[0]["text"] == "a black screen" and data[0]["video"] == str(tmp_path / "clips" / "a.mp4")
    assert read_video(data[0]["video"], num_frames=4).shape == (4, 32, 32, 3)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "v.jsonl").write_text(json.dumps({"video": "a.mp4", "text": "t"}) + "\n")
    moved = load_video_text(tmp_path / "meta" / "v.jsonl", media_root=tmp_path / "clips")
    assert moved[0]["video"] == str(tmp_path / "clips" / "a.mp4")
    assert next(iter(load_video_text(tmp_path / "webvid.csv", "contentUrl", "name", streaming=True)))["text"]


def test_obelics_parquet_and_flattening(tmp_path):
    features = Features({"imgs": List(Image()), "sentences": List(Value("string"))})
    docs = Dataset.from_dict({
        "imgs": [[{"bytes": encoded("red"), "path": None}, None, {"bytes": encoded("blue"), "path": None}, None]],
        "sentences": [[None, "a red one.", None, "a blue one."]],
    }, features=features)
    docs.to_parquet(str(tmp_path / "obelics.parquet"))
    data = load_interleaved(tmp_path / "obelics.parquet", images_column="imgs", texts_column="sentences")
    row = data[0]
    assert row["texts"] == [None, "a red one.", None, "a blue one."]
    assert row["images"][1] is None and pixel(row["images"][2]) == COLOURS["blue"]
    flat = load_interleaved(tmp_path / "obelics.parquet", "imgs", "sentences", flatten=True)[0]
    assert flat["text"] == "<visual>a red one.<|endofchunk|><visual>a blue one.<|endofchunk|>"
    assert [pixel(i) for i in flat["images"]] == [COLOURS["red"], COLOURS["blue"]]
    streamed = next(iter(load_interleaved(tmp_path / "obelics.parquet", "imgs", "sentences", streaming=True)))
    assert streamed["texts"][1] == "a red one."


def test_interleaved_jsonl_paths_and_mmc4(tmp_path):
    (tmp_path / "g.png").write_bytes(encoded("green"))
    (tmp_path / "docs.jsonl").write_text(json.dumps({"images": ["g.png", None], "texts": [None, "green."]}) + "\n")
    row = load_interleaved(tmp_path / "docs.jsonl")[0]
    assert pixel(row["images"][0]) == COLOURS["green"] and row["texts"] == [None, "green."]
    mmc4 = {"text_list": ["intro.", "a green picture."],
            "image_info": [{"image_name": "g.png", "matched_text_index": 1, "matched_sim": 0.3}]}
    (tmp_path / "mmc4").mkdir()
    (tmp_path / "mmc4" / "g.png").write_bytes(encoded("green"))
    (tmp_path / "mmc4" / "docs.jsonl").write_text(json.dumps(mmc4) + "\n")
    row = load_interleaved(tmp_path / "mmc4" / "docs.jsonl")[0]
    assert row["texts"] == ["intro.", None, "a green picture."] and row["images"][:2][0] is None
    flat = load_interleaved(tmp_path / "mmc4" / "docs.jsonl", flatten=True)[0]
    assert flat["text"] == "intro. <visual>a green picture.<|endofchunk|>" and len(flat["images"]) == 1


def test_interleaved_video_jsonl(tmp_path):
    for name in ("c0.mp4", "c1.mp4"):
        write_video(tmp_path / name, np.zeros((8, 32, 32, 3), dtype=np.uint8))
    row = {"clips": ["c0.mp4", "c1.mp4"], "captions": ["first, nothing.", "then, still nothing."]}
    (tmp_path / "howto.jsonl").write_text(json.dumps(row) + "\n")
    data = load_interleaved_video(tmp_path / "howto.jsonl", texts_column="captions")
    assert data[0]["videos"] == [str(tmp_path / "c0.mp4"), str(tmp_path / "c1.mp4")]
    assert data[0]["text"] == "<visual>first, nothing.<|endofchunk|><visual>then, still nothing.<|endofchunk|>"


def test_load_any_dispatches(tmp_path, imagefolder):
    embedded = load_any("shapes-captions", cache_dir=tmp_path / "cache", num_train=20, num_test=5,
                        image_column="ignored", text_column="ignored")
    assert set(embedded) == {"train", "test", "test_iid"} and len(embedded["train"]) == 20
    pairs = load_any(imagefolder, text_column="caption")
    assert isinstance(pairs, DatasetDict) and {"image", "text"} <= set(pairs["train"].column_names)
    (tmp_path / "v.csv").write_text("video,text\nx.mp4,a clip\n")
    videos = load_any(tmp_path / "v.csv", image_column="image")
    assert videos["train"][0]["video"] == str(tmp_path / "x.mp4")
    (tmp_path / "d.jsonl").write_text(json.dumps({"images": [None], "texts": ["only text"]}) + "\n")
    assert load_any(tmp_path / "d.jsonl")["train"][0]["texts"] == ["only text"]
    (tmp_path / "h.jsonl").write_text(json.dumps({"videos": ["a.mp4"], "texts": ["t"]}) + "\n")
    assert load_any(tmp_path / "h.jsonl")["train"][0]["text"] == "<visual>t<|endofchunk|>"
    with pytest.raises(ValueError, match="unknown kind"):
        load_any(tmp_path / "h.jsonl", kind="audio")


def test_clear_errors(tmp_path, imagefolder):
    with pytest.raises(FileNotFoundError, match=r"missing.*does not exist.*shapes-captions"):
        load_image_text(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt.*unsupported file type"):
        load_image_text(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the data format"):
        load_any(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"imagefolder.*no text column 'nope'.*text_column"):
        load_image_text(imagefolder, text_column="nope")
    (tmp_path / "v.csv").write_text("clip,caption\nx.mp4,c\n")
    with pytest.raises(ValueError, match=r"v.csv.*no video column 'video'.*\['clip', 'caption'\]"):
        load_video_text(tmp_path / "v.csv")
