"""Load user data in the layouts the field uses, all through `datasets`, into one schema.

Image-text pairs come out with an `image` and a `text` column; interleaved documents with `images` + `texts`
(OBELICS/MMC4 aligned lists) or `images` + `text` (placeholders); videos with a `video` path and `text`.
"""

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .embedded import EMBEDDED_DATASETS, load_embedded_dataset


def _rename(data, mapping: dict):
    mapping = {k: v for k, v in mapping.items() if k != v}
    if not mapping:
        return data
    columns = data.column_names if isinstance(data, Dataset) else next(iter(data.values())).column_names
    missing = [k for k in mapping if columns is not None and k not in columns]
    if missing:
        raise ValueError(f"column(s) {missing} not found; the data has {columns}. Pass the right *_column names.")
    return data.rename_columns(mapping)


def detect_format(path: str | Path) -> str:
    """"save_to_disk", "imagefolder", "parquet", "webdataset", "csv" or "json" for a file or folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a dataset folder or file, or an embedded name: "
                                f"{', '.join(sorted(EMBEDDED_DATASETS))})")
    if path.is_file():
        suffix = path.suffix.lower()
        formats = {".parquet": "parquet", ".tar": "webdataset", ".csv": "csv", ".jsonl": "json", ".json": "json"}
        if suffix in formats:
            return formats[suffix]
        raise ValueError(f"{path}: unsupported file type {suffix!r} (parquet, tar, csv, jsonl)")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return "save_to_disk"
    names = {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
    if ".tar" in names:
        return "webdataset"
    if ".parquet" in names:
        return "parquet"
    if any((path / m).exists() for m in ("metadata.jsonl", "metadata.csv")) or names & {".jpg", ".jpeg", ".png", ".webp"}:
        return "imagefolder"
    raise ValueError(f"{path}: cannot tell the dataset format (no metadata.jsonl/csv, parquet, tar shards, "
                     "or save_to_disk files found)")


def _load_path(path: str | Path, streaming: bool):
    fmt = detect_format(path)
    path = Path(path)
    if fmt == "save_to_disk":
        return load_from_disk(str(path))
    if fmt == "imagefolder":
        return load_dataset("imagefolder", data_dir=str(path), streaming=streaming)
    files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob(f"*.{ {'webdataset': 'tar'}.get(fmt, fmt) }"))
    return load_dataset(fmt, data_files=files, streaming=streaming)


def load_image_text(path: str | Path, image_column: str = "image", text_column: str = "text", streaming: bool = False):
    """Image-caption pairs from an imagefolder with metadata.jsonl/csv, parquet, a save_to_disk folder or
    webdataset shards (`xxx.jpg` + `xxx.txt`), renamed to `image` / `text`."""
    data = _load_path(path, streaming)
    if detect_format(path) == "webdataset":
        image_column = image_column if image_column != "image" else "jpg"
        text_column = text_column if text_column != "text" else "txt"
    return _rename(data, {image_column: "image", text_column: "text"})


def load_video_text(path: str | Path, video_column: str = "video", text_column: str = "text"):
    """WebVid layout: a csv/jsonl of video paths (relative to the file's folder) and captions."""
    path = Path(path)
    data = _rename(_load_path(path, streaming=False), {video_column: "video", text_column: "text"})
    root = path.parent if path.is_file() else path

    def resolve(example):
        video = Path(example["video"])
        example["video"] = str(video if video.is_absolute() else root / video)
        return example

    return data.map(resolve)


def load_any(name_or_path: str, image_column: str = "image", text_column: str = "text", streaming: bool = False, **kwargs):
    """An embedded corpus by name, or image-text data at a local path in any supported layout."""
    if name_or_path in EMBEDDED_DATASETS:
        return load_embedded_dataset(name_or_path, **kwargs)
    data = load_image_text(name_or_path, image_column, text_column, streaming)
    return data if isinstance(data, DatasetDict) or hasattr(data, "keys") else DatasetDict({"train": data})
