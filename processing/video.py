"""Video decoding with decord (frame sampling, clip windows, resizing, clear errors) and mp4 writing with PyAV."""

import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "random_segment")


class VideoDecodingError(ValueError):
    """A video that cannot be decoded; `path` names the file, `reason` says why."""

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"video {str(path)!r}: {reason}")


def sample_indices(num_total: int, num_frames: int, sampling: str = "uniform", rng: random.Random | None = None,
                   start: int = 0, end: int | None = None) -> list[int]:
    """Indices of `num_frames` frames within [start, end) of a `num_total`-frame video, split into `num_frames`
    equal segments: "uniform" takes each segment's centre, "random_segment" a random frame of each segment.
    Segments shorter than a frame repeat frames."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLINGS}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    start = max(0, start)
    end = num_total if end is None else min(end, num_total)
    if end - start <= 0:
        raise ValueError(f"empty frame window [{start}, {end}) of a {num_total}-frame video")
    edges = np.linspace(start, end, num_frames + 1)
    if sampling == "uniform":
        return [min(end - 1, int((a + b) / 2)) for a, b in zip(edges[:-1], edges[1:])]
    rng = rng or random.Random()
    return [min(end - 1, rng.randrange(int(a), max(int(a) + 1, int(b)))) for a, b in zip(edges[:-1], edges[1:])]


def read_video(path, num_frames: int = 8, sampling: str = "uniform", start: float | None = None,
               end: float | None = None, size: int | tuple[int, int] | None = None,
               seed: int | None = None) -> np.ndarray:
    """Decode `num_frames` frames of `path` as (F, H, W, 3) uint8.

    Args:
        sampling: "uniform" (segment centres) or "random_segment" (a random frame per segment, seeded by `seed`).
        start, end: clip window in seconds (default: the whole video).
        size: resize while decoding; an int for a square, or (height, width).

    Raises:
        VideoDecodingError: missing, empty, corrupt or truncated files, and windows outside the video.
    """
    try:
        import decord
    except ImportError as err:  # pragma: no cover - decord is an optional extra
        raise ImportError("Reading videos needs decord: pip install 'cosmo-vl[video]'") from err
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLINGS}")
    file = Path(path)
    if not file.is_file():
        raise VideoDecodingError(path, "file not found")
    if file.stat().st_size == 0:
        raise VideoDecodingError(path, "0-byte file")
    try:
        reader = decord.VideoReader(str(file), num_threads=1)
        total = len(reader)
    except Exception as err:  # decord raises DECORDError / RuntimeError on unreadable containers
        raise VideoDecodingError(path, f"unreadable ({_brief(err)})") from err
    if total == 0:
        raise VideoDecodingError(path, "no frames")
    fps = float(reader.get_avg_fps() or 0) or 1.0
    first = 0 if start is None else int(round(start * fps))
    last = total if end is None else int(round(end * fps))
    if first >= min(last, total):
        raise VideoDecodingError(path, f"empty window [{start}, {end}) s of a {total / fps:.2f} s video")
    indices = sample_indices(total, num_frames, sampling, random.Random(seed), first, last)
    try:
        frames = reader.get_batch(indices).asnumpy()
    except Exception as err:
        raise VideoDecodingError(path, f"undecodable frames ({_brief(err)})") from err
    if frames.shape[0] != len(indices):
        raise VideoDecodingError(path, f"decoded {frames.shape[0]} of {len(indices)} frames")
    return frames if size is None else resize_frames(frames, size)


def resize_frames(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (F, H, W, 3) frames to `size` (int = square, or (height, width)). Done after decoding:
    decord's own scaler fails for some output sizes."""
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((int(width), int(height)), Image.BILINEAR)) for f in frames])


def _brief(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


class SkipCounter(Counter):
    """Counts skipped samples per reason and logs each skip."""

    def skip(self, reason: str, detail: str = "") -> None:
        self[reason] += 1
        logger.warning("skipped (%s) %s", reason, detail)

    @property
    def total(self) -> int:
        return sum(self.values())


def read_video_or_none(path, on_error: str = "skip", counter: SkipCounter | None = None, **kwargs):
    """`read_video`, but with `on_error="skip"` a bad file returns None and is counted in `counter` under its
    reason ("file not found", "0-byte file", "unreadable", ...); `on_error="raise"` re-raises."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    try:
        return read_video(path, **kwargs)
    except VideoDecodingError as err:
        if on_error == "raise":
            raise
        if counter is not None:
            counter.skip(err.reason.split(" (")[0], str(err))
        return None


def write_video(path, frames: np.ndarray, fps: int = 8, codec: str | None = None) -> Path:
    """Write (F, H, W, 3) uint8 frames as an mp4 with PyAV: H.264 (libx264, high quality) when available,
    else MPEG-4 part 2. Height and width must be even."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (F, H, W, 3) array, got shape {frames.shape}")
    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
