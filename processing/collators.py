"""Data collators that run the processor, so `remove_unused_columns` never drops media.

One collator handles every sample layout the loaders produce: image-caption pairs (`image` + `text`), interleaved
documents (`images` + `text` with `<visual>` placeholders, or OBELICS-style aligned `images` / `texts` lists),
videos (`video` path or frame array + `text`) and interleaved videos (`videos` + `text`). Broken samples either
raise an error naming the sample, or (``on_error="skip"``) are counted, logged and dropped while the rest of the
batch is kept.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .images import ImageLoadingError
from .media import load_media
from .synthetic import interleaved_to_text
from .video import VideoDecodingError

logger = logging.getLogger(__name__)


class SampleError(ValueError):
    """A sample that cannot be turned into model inputs; names the sample and the reason."""


@dataclass
class SkipStats:
    """Counts of dropped samples per reason (shared by the collator's calls)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        logger.warning("skipping sample (%s): %s", reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class VLCollator:
    """Turn raw examples into a padded `CosmoProcessor` batch with labels.

    Args:
        processor: a `CosmoProcessor` (or compatible).
        text_column / image_column / images_column / video_column / videos_column / texts_column: column names.
        num_frames: frames sampled per video (uniform, or segment-random when `video_sampling="random_segment"`).
        max_length / truncation: sequence limits passed to the processor.
        on_error: "raise" (default) or "skip" (count in `stats`, log, keep the rest of the batch).
        return_labels: build LM labels (training); off for pure inference batches.
    """

    processor: Any
    text_column: str = "text"
    image_column: str = "image"
    images_column: str = "images"
    texts_column: str = "texts"
    video_column: str = "video"
    videos_column: str = "videos"
    num_frames: int = 8
    video_sampling: str = "uniform"
    max_length: int | None = None
    truncation: bool = False
    on_error: str = "raise"
    return_labels: bool = True
    stats: SkipStats = field(default_factory=SkipStats)

    def _image(self, item):
        return load_media(item, "image")

    def _video(self, item):
        return load_media(item, "video", num_frames=self.num_frames, sampling=self.video_sampling)

    def example_to_sample(self, example: dict, index: int = 0) -> tuple[str, list]:
        """(text with placeholders, ordered media) for one example; raises `SampleError` naming the problem."""
        try:
            if self.texts_column in example and self.images_column in example and example.get(self.text_column) is None:
                text, media = interleaved_to_text(
                    example[self.images_column], example[self.texts_column],
                    self.processor.media_token, self.processor.endofchunk_token,
                )
                media = [self._image(m) for m in media]
            elif example.get(self.image_column) is not None:
                text, media = example.get(self.text_column), [self._image(example[self.image_column])]
            elif example.get(self.images_column) is not None:
                # OBELICS-aligned lists hold None where the document has text: keep the images, in order.
                images = [m for m in example[self.images_column] if m is not None]
                text, media = example.get(self.text_column), [self._image(m) for m in images]
            elif example.get(self.video_column) is not None:
                text, media = example.get(self.text_column), [self._video(example[self.video_column])]
            elif example.get(self.videos_column) is not None:
                videos = [v for v in example[self.videos_column] if v is not None]
                text, media = example.get(self.text_column), [self._video(v) for v in videos]
            else:
                text, media = example.get(self.text_column), []
        except (ImageLoadingError, VideoDecodingError, OSError) as err:
            raise SampleError(f"sample {index}: unreadable media ({err})") from err
        if isinstance(text, (list, tuple)):
            raise SampleError(f"sample {index}: column {self.text_column!r} holds a list of {len(text)} captions; "
                              "draw one per sample first (cosmo_vl.processing.one_caption_per_sample)")
        if not isinstance(text, str) or not text.strip():
            raise SampleError(f"sample {index}: empty or missing text in column {self.text_column!r}")
        return text, media

    def _process(self, samples: list[tuple[str, list]]):
        texts = [t for t, _ in samples]
        media = [m for _, m in samples]
        kwargs = dict(return_tensors="pt", max_length=self.max_length, truncation=self.truncation,
                      return_labels=self.return_labels, padding_side="right")  # training rows start at position 0
        if any(media):
            return self.processor(text=texts, media=media, **kwargs)
        return self.processor(text=texts, **kwargs)

    def __call__(self, examples: list[dict]):
        samples, kept = [], []
        for i, example in enumerate(examples):
            try:
                samples.append(self.example_to_sample(example, i))
                kept.append(i)
            except SampleError as err:
                if self.on_error != "skip":
                    raise
                self.stats.add("media" if "media" in str(err) else "text", str(err))
        try:
            return self._process(samples) if samples else self._empty(len(examples))
        except ValueError:
            if self.on_error != "skip":
                raise
        # The processor rejected something (placeholder/media mismatch, too long...): find it, keep the others.
        good = []
        for i, sample in zip(kept, samples):
            try:
                self._process([sample])
                good.append(sample)
            except ValueError as err:
                self.stats.add("processor", f"sample {i}: {err}")
        return self._process(good) if good else self._empty(len(examples))

    def _empty(self, n: int):
        raise SampleError(
            f"all {n} samples of the batch were unusable (skipped so far: {dict(self.stats.counts)}); "
            "check the dataset columns and media files."
        )
