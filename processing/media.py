"""One decode path for media items, shared by the training collator and the evaluation loops.

`load_media` turns whatever a dataset row may hold into what the processor takes: an image (PIL image, datasets
record `{"bytes", "path"}`, encoded bytes, a path, an (H, W[, C]) array) -> RGB PIL image through `load_image`;
a video (a path to a video file, (F, H, W, 3) frames, a list of frames) -> frames through `read_video`.
"""

import os
from pathlib import Path

import numpy as np

from .images import load_image
from .video import read_video

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v"}
KINDS = ("image", "video")


def media_kind(item) -> str:
    """The kind of a media item: "video" for frame stacks, lists of frames and paths with a video suffix, else
    "image"."""
    if isinstance(item, (list, tuple)):
        return "video"
    if hasattr(item, "ndim") and not isinstance(item, (bytes, bytearray)):  # numpy arrays and torch tensors
        return "video" if item.ndim == 4 else "image"
    if isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    return "image"


def load_media(item, kind: str | None = None, num_frames: int = 8, sampling: str = "uniform"):
    """One media item -> RGB PIL image (`kind="image"`) or video frames (`kind="video"`: (F, H, W, 3) uint8 from
    a path, else the given frames unchanged). `kind=None` guesses it with `media_kind`. Raises `ImageLoadingError`
    / `VideoDecodingError` naming the item."""
    kind = kind or media_kind(item)
    if kind not in KINDS:
        raise ValueError(f"unknown media kind {kind!r}; use one of {KINDS}")
    if kind == "image":
        return load_image(item)
    if isinstance(item, (str, os.PathLike)):
        return read_video(item, num_frames=num_frames, sampling=sampling)
    if isinstance(item, (list, tuple)):
        return list(item)
    return item if hasattr(item, "ndim") else np.asarray(item)
