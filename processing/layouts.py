"""What an image-text table holds, and its image column turned into a datasets `Image` column.

An image column may hold, as written by its producer: datasets `Image` values (`Dataset.to_parquet`), bare
`{"bytes", "path"}` structs (pyarrow / pandas), encoded bytes (a binary column), or paths (relative to the data
file, or absolute). URLs are refused at load time: images are downloaded before training (img2dataset), never
fetched by the data loader. A caption column holds a string, or a list of strings (several captions per image).
"""

import os
import re
from itertools import islice
from pathlib import Path

from datasets import Image, IterableDataset, LargeList, List, Value
from PIL import Image as PILImage

IMAGE_COLUMN_ACCEPTS = ("datasets Image values, {bytes, path} structs, encoded image bytes (binary) or image paths "
                        "(relative to the data file or absolute)")
TEXT_COLUMN_ACCEPTS = "strings, or lists of strings (several captions per image)"
_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_STRINGS = ("string", "large_string")
_BINARY = ("binary", "large_binary")
PEEK = 8  # rows read to tell what a column holds


class LayoutError(ValueError):
    """Data whose columns do not form an image-text layout; the message lists what was found and what is accepted."""


def is_remote(value) -> bool:
    """True for a URL other than file:// (http://, https://, s3://, gs://, hf://, ...)."""
    return isinstance(value, str) and bool(_REMOTE.match(value)) and not value.startswith("file://")


def peek(data, column: str, n: int = PEEK) -> list:
    """The first `n` values of `column` (undecoded for a map-style dataset)."""
    if isinstance(data, IterableDataset):
        return [row.get(column) for row in islice(iter(data), n)]
    head = data.select(range(min(n, len(data))))
    feature = (head.features or {}).get(column)
    if isinstance(feature, Image):
        head = head.cast_column(column, Image(decode=False))
    return head[column]


def _kind(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_kind(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def describe_columns(data) -> str:
    """'name: feature' for every column (from the features, else from the first row's values)."""
    features = getattr(data, "features", None)
    if features:
        return ", ".join(f"{name}: {feature}" for name, feature in features.items())
    first = next(iter(data), None) or {}
    return ", ".join(f"{name}: {_kind(value)}" for name, value in first.items())


def layout_error(path, data, problem: str) -> LayoutError:
    return LayoutError(
        f"{path}: {problem}. Found the columns: {describe_columns(data)}. --image_column (image_column=) accepts a "
        f"column of {IMAGE_COLUMN_ACCEPTS}; --text_column (text_column=) accepts {TEXT_COLUMN_ACCEPTS}, or for "
        "webdataset shards a field of the .json files."
    )


def _holds(feature, values, kind: str) -> bool:
    """Whether a column is of `kind` ("string", "binary", "struct", "image"), from its feature or, unknown, its
    values."""
    if feature is not None:
        if kind == "struct":
            return isinstance(feature, dict) and bool({"bytes", "path"} & set(feature))
        return isinstance(feature, Value) and feature.dtype in (_STRINGS if kind == "string" else _BINARY)
    present = [v for v in values if v is not None]
    types = {"string": str, "binary": (bytes, bytearray), "struct": dict, "image": PILImage.Image}
    return bool(present) and all(isinstance(v, types[kind]) for v in present)


def _refuse_urls(values, column: str, path) -> None:
    remote = [v for v in values if is_remote(v)]
    if remote:
        raise LayoutError(
            f"{path}: the image column {column!r} holds URLs (e.g. {remote[0]!r}); images are not fetched at "
            "training time. Download them first (e.g. `img2dataset --url_list ... --output_format parquet` or "
            "`webdataset`), then pass the downloaded data as --dataset."
        )


def resolve_path(value, root: Path):
    """A relative path string joined to `root`; absolute paths, URLs and other values unchanged."""
    if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
        return str(root / value)
    return value


def _struct_paths_needed(data, column: str, values) -> bool:
    """Whether some record of a {bytes, path} column has no bytes (its path must then be resolved)."""
    if isinstance(data, IterableDataset):
        return any(isinstance(v, dict) and not v.get("bytes") for v in values)
    table = data.data.column(column)
    if "bytes" not in {table.type.field(i).name for i in range(table.type.num_fields)}:
        return True
    return any(chunk.field("bytes").null_count > 0 or chunk.null_count > 0 for chunk in table.chunks)


def image_column_to_image(data, column: str, root: Path, path):
    """`column` as a datasets `Image` column (paths resolved against `root`); URLs and unknown contents raise
    `LayoutError` naming the column."""
    feature = (data.features or {}).get(column)
    if isinstance(feature, Image):
        return data
    values = peek(data, column)
    if feature is None and _holds(None, values, "image"):  # a stream that lost its schema in a lazy map
        return data
    if _holds(feature, values, "string"):
        _refuse_urls(values, column, path)
        local = [resolve_path(v, root) for v in values if v]
        if local and not any(Path(v).is_file() for v in local):
            raise LayoutError(f"{path}: the image column {column!r} holds paths, but none of the first ones exists "
                              f"(e.g. {local[0]!r}); relative paths resolve against the data file's folder, or "
                              "against media_root when given.")
        return _to_image(data, column, lambda value: resolve_path(value, root))
    if _holds(feature, values, "struct"):
        _refuse_urls([v.get("path") for v in values if isinstance(v, dict) and not v.get("bytes")], column, path)
        if _struct_paths_needed(data, column, values):
            return _to_image(data, column, lambda rec: rec and {**rec, "path": resolve_path(rec.get("path"), root)})
        return _to_image(data, column)
    if _holds(feature, values, "binary"):
        return _to_image(data, column)
    raise layout_error(path, data, f"the image column {column!r} holds neither images, {{bytes, path}} records, "
                                   "encoded bytes nor paths")


def _to_image(data, column: str, function=None):
    """`column` (its values passed through `function` first) as a datasets `Image` column. A stream of unknown
    schema (json) keeps its values: `load_media` decodes them the same way."""
    if function is not None:
        def apply(row):
            return {column: function(row[column])}

        if isinstance(data, IterableDataset) and data.features is not None:  # a lazy map forgets the features
            features = data.features.copy()
            features[column] = Image()
            return data.map(apply, features=features)
        data = data.map(apply)
    return data if data.features is None else data.cast_column(column, Image())


def check_text_column(data, column: str, path) -> None:
    """Raise `LayoutError` unless `column` holds strings or lists of strings."""
    feature = (data.features or {}).get(column)
    if feature is not None:
        inner = getattr(feature, "feature", None) if isinstance(feature, (List, LargeList)) else feature
        if isinstance(feature, list) and feature:
            inner = feature[0]
        if isinstance(inner, Value) and inner.dtype in _STRINGS:
            return
    else:
        values = [v for v in peek(data, column) if v is not None]
        if all(isinstance(v, str) or (isinstance(v, list) and all(isinstance(c, str) for c in v)) for v in values):
            return
    raise layout_error(path, data, f"the text column {column!r} holds neither strings nor lists of strings")
