"""Video decoding with decord: frame sampling, clip windows, resizing, clear errors for bad files."""

import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class VideoDecodingError(ValueError):
    """A video that cannot be decoded; names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"video {str(path)!r}: {reason}")


def sample_indices(num_total: int, num_frames: int, sampling: str = "uniform", rng: random.Random | None = None,
                   start: int = 0, end: int | None = None) -> list[int]:
    """Frame indices within [start, end): "uniform" = centres of `num_frames` equal segments,
    "random_segment" = one random frame per segment (TSN-style)."""
    end = num_total if end is None else min(end, num_total)
    length = end - start
    if length <= 0:
        raise ValueError(f"empty frame window [{start}, {end}) of a {num_total}-frame video")
    edges = np.linspace(start, end, num_frames + 1)
    if sampling == "uniform":
        return [min(end - 1, int((a + b) / 2)) for a, b in zip(edges[:-1], edges[1:])]
    if sampling == "random_segment":
        rng = rng or random.Random()
        return [min(end - 1, rng.randrange(int(a), max(int(a) + 1, int(b)))) for a, b in zip(edges[:-1], edges[1:])]
    raise ValueError(f"unknown sampling {sampling!r}; use 'uniform' or 'random_segment'")


def read_video(path, num_frames: int = 8, sampling: str = "uniform", start: float | None = None,
               end: float | None = None, size: int | tuple[int, int] | None = None, seed: int | None = None) -> np.ndarray:
    """Decode `num_frames` frames (F, H, W, 3) uint8 from `path`, optionally within [start, end) seconds and
    resized to `size` (int = square, or (height, width))."""
    try:
        import decord
    except ImportError as err:  # pragma: no cover - decord is an optional extra
        raise ImportError("Reading videos needs decord: pip install 'cosmo-vl[video]'") from err
    path = Path(path)
    if not path.is_file():
        raise VideoDecodingError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodingError(path, "0-byte file")
    kwargs = {}
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        kwargs = {"width": width, "height": height}
    try:
        reader = decord.VideoReader(str(path), num_threads=1, **kwargs)
        total = len(reader)
        if total == 0:
            raise VideoDecodingError(path, "no frames")
        fps = float(reader.get_avg_fps() or 0) or 1.0
        first = 0 if start is None else int(start * fps)
        last = total if end is None else int(end * fps)
        indices = sample_indices(total, num_frames, sampling, random.Random(seed), first, last)
        frames = reader.get_batch(indices).asnumpy()
    except VideoDecodingError:
        raise
    except Exception as err:  # decord raises its own DECORDError and RuntimeError on corrupt streams
        raise VideoDecodingError(path, f"undecodable ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    return frames


class SkipCounter(Counter):
    """Counts skipped samples per reason, logging each skip."""

    def skip(self, reason: str, detail: str = "") -> None:
        self[reason] += 1
        logger.warning("skipped (%s) %s", reason, detail)


def read_video_or_none(path, counter: SkipCounter | None = None, **kwargs):
    """`read_video`, returning None (counted in `counter`) instead of raising on a bad file."""
    try:
        return read_video(path, **kwargs)
    except VideoDecodingError as err:
        if counter is not None:
            counter.skip(err.reason.split(" (")[0], str(err))
        return None
