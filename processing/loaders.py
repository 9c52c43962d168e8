"""Load user data in the layouts the field uses, through `datasets`, into the schema of the embedded corpora.

    load_image_text        -> image, text          imagefolder + metadata.jsonl/csv, parquet (images as datasets
                                                   Images, {bytes, path} structs, bytes or paths), csv/jsonl of image
                                                   paths, a save_to_disk folder, webdataset shards (xxx.jpg/png/webp +
                                                   xxx.txt or xxx.json); text: a caption or a list of captions
    load_interleaved       -> images, texts        OBELICS-aligned lists (or MMC4 text_list + image_info), from
                                                   parquet, jsonl or save_to_disk; flatten=True gives images + text
    load_video_text        -> video, text          WebVid layout: csv/jsonl/parquet of video paths and captions
    load_interleaved_video -> videos, texts, text  ordered clips and their captions (Howto-Interlink7M layout)
    load_any               -> DatasetDict          an embedded corpus by name, or any of the above by its columns

Each loader returns the `split` (default "train") as a `Dataset`, an `IterableDataset` with `streaming=True`, or
all splits with `split=None`. Relative media paths resolve against the data file's folder (or `media_root`).
A folder's splits follow the Hub's file names (`data/train-00000-of-00002.parquet`, `data/test-...`).
"""

import inspect
import os
from pathlib import Path

from datasets import (
    DatasetDict,
    Image,
    IterableDatasetDict,
    List,
    load_dataset,
    load_from_disk,
)
from datasets.data_files import DataFilesDict, get_data_patterns

from .layouts import check_text_column, image_column_to_image, layout_error
from .layouts import resolve_path as _resolve
from .synthetic import EMBEDDED_DATASETS, interleaved_to_text, load_embedded_dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_FILE_FORMATS = {".parquet": "parquet", ".tar": "webdataset", ".csv": "csv", ".jsonl": "json", ".json": "json"}
# Columns tried, in order, when the default column name is absent.
_FALLBACKS = {
    "image": ["image", "jpg", "jpeg", "png", "webp", "img", "image_path", "file_name"],
    "text": ["text", "caption", "txt", "name", "TEXT", "sentence", "captions", "sentences"],
    "video": ["video", "video_path", "path", "mp4", "contentUrl"],
    "videos": ["videos", "clips", "video_paths"],
    "images": ["images"],
    "texts": ["texts", "captions"],
}


def detect_format(path: str | os.PathLike) -> str:
    """Format of a data file or folder: "save_to_disk", "webdataset", "parquet", "imagefolder", "json" or "csv"."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a data file or folder, or an embedded corpus: "
                                f"{', '.join(EMBEDDED_DATASETS)})")
    if path.is_file():
        if path.suffix.lower() in _FILE_FORMATS:
            return _FILE_FORMATS[path.suffix.lower()]
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (expected .parquet, .tar, .csv, .jsonl)")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return "save_to_disk"
    suffixes = {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
    if ".tar" in suffixes:
        return "webdataset"
    if ".parquet" in suffixes:
        return "parquet"
    if any((path / m).exists() for m in ("metadata.jsonl", "metadata.csv")) or suffixes & IMAGE_SUFFIXES:
        return "imagefolder"
    for suffix in (".jsonl", ".json", ".csv"):
        if suffix in suffixes:
            return _FILE_FORMATS[suffix]
    raise ValueError(f"{path}: cannot tell the data format (expected metadata.jsonl/csv with images, parquet files, "
                     "webdataset .tar shards, csv/jsonl files or a save_to_disk folder)")


def _load_raw(path, streaming: bool, **load_kwargs):
    """All splits of the data at `path` as a DatasetDict (IterableDatasetDict when streaming)."""
    fmt, path = detect_format(path), Path(path)
    if fmt == "save_to_disk":
        data = load_from_disk(str(path))
        data = data if isinstance(data, DatasetDict) else DatasetDict({"train": data})
        return IterableDatasetDict({k: v.to_iterable_dataset() for k, v in data.items()}) if streaming else data
    if fmt == "imagefolder":
        return load_dataset("imagefolder", data_dir=str(path), streaming=streaming, **load_kwargs)
    suffix = {"webdataset": ".tar", "json": (".jsonl", ".json")}.get(fmt, f".{fmt}")
    files = {"train": [str(path)]} if path.is_file() else _split_files(path, suffix)
    try:
        return load_dataset(fmt, data_files=files, streaming=streaming, **load_kwargs)
    except ValueError as err:
        if fmt != "webdataset":
            raise
        raise ValueError(f"{path}: unreadable webdataset shards ({err}); every sample needs the same members, e.g. "
                         "xxx.jpg + xxx.txt (or xxx.json) in every shard.") from err


def _split_files(folder: Path, suffix) -> dict[str, list[str]]:
    """{split: files} of a folder, with the split names the Hub reads from file names (`data/train-00000-of-
    00002.parquet`, `test/...`; datasets' own patterns), else every file as "train"; kept to the format's files."""
    patterns = get_data_patterns(str(folder))
    resolved = DataFilesDict.from_patterns(patterns, base_path=str(folder))
    files = {split: sorted(str(f) for f in found if str(f).lower().endswith(suffix))
             for split, found in resolved.items()}
    return {split: found for split, found in files.items() if found}


def _columns(data) -> list[str]:
    if data.column_names is not None:
        return list(data.column_names)
    first = next(iter(data), None)  # some streamed formats only know their columns once read
    return list(first) if first is not None else []


def _pick(columns: list[str], wanted: str, default: str, path, role: str, required: bool = True) -> str | None:
    """The column to use for `role`: `wanted` itself, or for the default name the first known alternative."""
    if wanted in columns:
        return wanted
    if wanted == default:
        for alternative in _FALLBACKS[default]:
            if alternative in columns:
                return alternative
    if required:
        raise ValueError(f"{path}: no {role} column {wanted!r}; the data has columns {columns}. "
                         f"Pass {default}_column=<name>.")
    return None


def _rename(data, mapping: dict):
    mapping = {k: v for k, v in mapping.items() if k != v}
    taken = [v for v in mapping.values() if v in _columns(data) and v not in mapping]
    if taken:  # the target name exists as another column: keep it under a prefixed name
        data = data.rename_columns({v: f"original_{v}" for v in taken})
    return data.rename_columns(mapping) if mapping else data


def _root(path, media_root) -> Path:
    if media_root is not None:
        return Path(media_root)
    path = Path(path)
    return path.parent if path.is_file() else path


def _select(data, split: str | None, path):
    if split is None:
        return data
    if split not in data:
        raise ValueError(f"{path}: no split {split!r}; available: {list(data)}")
    return data[split]


def _per_split(data, function):
    cls = IterableDatasetDict if isinstance(data, IterableDatasetDict) else DatasetDict
    return cls({name: function(part) for name, part in data.items()})


# --------------------------------------------------------------------------------------------- image-text pairs
def _image_text(data, path, image_column, text_column, root):
    columns = _columns(data)
    try:
        image = _pick(columns, image_column, "image", path, "image")
        text = _pick(columns, text_column, "text", path, "text", required="json" not in columns)
    except ValueError as err:
        raise layout_error(path, data, str(err).removeprefix(f"{path}: ").split(";")[0]) from err
    if text is None:  # webdataset with xxx.json: the caption is a field of the json
        data = data.map(lambda ex: {"text": _json_caption(ex["json"], text_column, path)})
        text = "text"
    check_text_column(data, text, path)
    data = image_column_to_image(data, image, root, path)
    return _rename(data, {image: "image", text: "text"})


def _json_caption(record, key: str, path) -> str:
    for candidate in (key, "caption", "captions", "text", "TEXT"):
        if isinstance(record, dict) and record.get(candidate) is not None:
            return record[candidate]
    raise ValueError(f"{path}: no caption field {key!r} (or caption/text) in the json record {record!r}")


def load_image_text(path, image_column: str = "image", text_column: str = "text", split: str | None = "train",
                    streaming: bool = False, media_root=None, **load_kwargs):
    """Image-caption pairs -> `image` (datasets Image) + `text`.

    Layouts: imagefolder with metadata.jsonl/csv (`file_name` + caption columns), parquet file(s) or a Hub folder of
    split shards, csv/jsonl of image paths, a save_to_disk folder, webdataset shards (`000000.tar` holding
    `xxx.jpg`/`.png`/`.webp` + `xxx.txt` or `xxx.json` with a caption field). The image column may hold datasets
    Images, `{bytes, path}` structs, encoded bytes or paths (see `layouts`); URLs and unknown layouts raise
    `LayoutError`. The text column holds a caption or a list of captions (kept: `one_caption_per_sample` draws one
    for training). Extra keyword arguments go to `datasets.load_dataset`."""
    data = _load_raw(path, streaming, **load_kwargs)
    root = _root(path, media_root)
    return _select(_per_split(data, lambda d: _image_text(d, path, image_column, text_column, root)), split, path)


# ------------------------------------------------------------------------------------------ interleaved documents
def _mmc4_to_aligned(example, root: Path) -> dict:
    """MMC4 `text_list` + `image_info` (`image_name`, `matched_text_index`) -> OBELICS-aligned lists, each image
    placed before its matched sentence."""
    by_sentence: dict[int, list] = {}
    for info in example["image_info"] or []:
        source = info.get("path") or info.get("image_name") or info.get("raw_url")
        by_sentence.setdefault(int(info.get("matched_text_index", 0)), []).append(_resolve(source, root))
    images, texts = [], []
    for i, sentence in enumerate(example["text_list"]):
        for image in by_sentence.get(i, []):
            images.append(image)
            texts.append(None)
        images.append(None)
        texts.append(sentence)
    return {"images": images, "texts": texts}


def _interleaved(data, path, images_column, texts_column, root, flatten):
    columns = _columns(data)
    if images_column not in columns and {"text_list", "image_info"} <= set(columns):
        data = data.map(lambda ex: _mmc4_to_aligned(ex, root), remove_columns=["text_list", "image_info"])
        columns = _columns(data)
    images = _pick(columns, images_column, "images", path, "images")
    texts = _pick(columns, texts_column, "texts", path, "texts")
    data = _rename(data, {images: "images", texts: "texts"})
    feature = (data.features or {}).get("images")
    if feature is None or not isinstance(getattr(feature, "feature", None), Image):  # lists of paths
        data = data.map(lambda ex: {"images": [_resolve(p, root) for p in ex["images"]]})
        data = data.cast_column("images", List(Image()))
    if flatten:
        data = data.map(lambda ex: dict(zip(("text", "images"), interleaved_to_text(ex["images"], ex["texts"]))),
                        remove_columns=["texts"])
    return data


def load_interleaved(path, images_column: str = "images", texts_column: str = "texts", split: str | None = "train",
                     streaming: bool = False, flatten: bool = False, media_root=None, **load_kwargs):
    """Interleaved documents -> OBELICS-aligned `images` / `texts` (position i holds an image or a text; images as
    bytes, paths or datasets Images). MMC4 rows (`text_list` + `image_info`) are aligned the same way.
    `flatten=True` returns `text` with `<visual>` placeholders and `images` without the None slots instead."""
    data = _load_raw(path, streaming, **load_kwargs)
    root = _root(path, media_root)
    finish = lambda d: _interleaved(d, path, images_column, texts_column, root, flatten)  # noqa: E731
    return _select(_per_split(data, finish), split, path)


# -------------------------------------------------------------------------------------------------------- video
def _video_text(data, path, video_column, text_column, root):
    columns = _columns(data)
    video = _pick(columns, video_column, "video", path, "video")
    text = _pick(columns, text_column, "text", path, "text")
    data = _rename(data, {video: "video", text: "text"})
    return data.map(lambda ex: {"video": _resolve(ex["video"], root)})


def load_video_text(path, video_column: str = "video", text_column: str = "text", split: str | None = "train",
                    streaming: bool = False, media_root=None, **load_kwargs):
    """Video-caption pairs (WebVid layout: csv/jsonl/parquet or save_to_disk rows of a video path and a caption)
    -> `video` (path, resolved against the file's folder or `media_root`) + `text`."""
    data = _load_raw(path, streaming, **load_kwargs)
    root = _root(path, media_root)
    return _select(_per_split(data, lambda d: _video_text(d, path, video_column, text_column, root)), split, path)


def _interleaved_video(data, path, videos_column, texts_column, root):
    columns = _columns(data)
    videos = _pick(columns, videos_column, "videos", path, "videos")
    texts = _pick(columns, texts_column, "texts", path, "texts")
    data = _rename(data, {videos: "videos", texts: "texts"})

    def finish(example):
        clips = [_resolve(v, root) for v in example["videos"]]
        captions = example["texts"]
        if len(captions) != len(clips):
            raise ValueError(f"{path}: a row has {len(clips)} clips but {len(captions)} captions")
        out = {"videos": clips}
        if "text" not in example or example.get("text") is None:
            if None in clips:  # OBELICS-aligned
                out["text"] = interleaved_to_text(clips, captions)[0]
            else:  # one caption per clip
                out["text"] = interleaved_to_text([x for c in clips for x in (c, None)],
                                                  [x for t in captions for x in (None, t)])[0]
        return out

    return data.map(finish)


def load_interleaved_video(path, videos_column: str = "videos", texts_column: str = "texts",
                           split: str | None = "train", streaming: bool = False, media_root=None, **load_kwargs):
    """Ordered clips with captions (Howto-Interlink7M layout): `videos` (paths) + `texts` (one caption per clip,
    or OBELICS-aligned with None slots) + `text` (`<visual>caption<|endofchunk|>` chunks, unless present)."""
    data = _load_raw(path, streaming, **load_kwargs)
    root = _root(path, media_root)
    finish = lambda d: _interleaved_video(d, path, videos_column, texts_column, root)  # noqa: E731
    return _select(_per_split(data, finish), split, path)


# ------------------------------------------------------------------------------------------------------ dispatch
_EMBEDDED_OPTIONS = {"cache_dir", "seed", "num_train", "num_test"}


def load_any(name_or_path, kind: str | None = None, streaming: bool = False, **kwargs):
    """An embedded corpus by name (`load_embedded_dataset`), or local data in any supported layout, as a
    DatasetDict (IterableDatasetDict when streaming) of all splits.

    `kind` ("image_text", "interleaved", "video_text", "interleaved_video") defaults to a guess from the columns:
    videos -> interleaved_video, video -> video_text, images / MMC4 -> interleaved, else image_text. Column-name
    keywords (`image_column`, ...) go to the chosen loader; for embedded corpora they are ignored."""
    if str(name_or_path) in EMBEDDED_DATASETS:
        options = set(EMBEDDED_DATASETS[str(name_or_path)]) | _EMBEDDED_OPTIONS
        data = load_embedded_dataset(str(name_or_path), **{k: v for k, v in kwargs.items() if k in options})
        return IterableDatasetDict({k: v.to_iterable_dataset() for k, v in data.items()}) if streaming else data
    loaders = {"image_text": load_image_text, "interleaved": load_interleaved, "video_text": load_video_text,
               "interleaved_video": load_interleaved_video}
    if kind is None:
        raw = _load_raw(name_or_path, streaming)
        columns = set(_columns(next(iter(raw.values()))))
        if kwargs.get("videos_column", "videos") in columns:
            kind = "interleaved_video"
        elif kwargs.get("video_column", "video") in columns:
            kind = "video_text"
        elif kwargs.get("images_column", "images") in columns or {"text_list", "image_info"} <= columns:
            kind = "interleaved"
        else:
            kind = "image_text"
    if kind not in loaders:
        raise ValueError(f"unknown kind {kind!r}; use one of {list(loaders)}")
    loader = loaders[kind]
    accepted = inspect.signature(loader).parameters
    # Column names meant for another layout (e.g. image_column for a video dataset) do not apply here.
    kwargs = {k: v for k, v in kwargs.items() if k in accepted or not k.endswith("_column")}
    return loader(name_or_path, split=None, streaming=streaming, **kwargs)

