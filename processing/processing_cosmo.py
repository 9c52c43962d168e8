"""Processor for CosMo-style interleaved image/video + text models.

Self-contained: imports only ``numpy``, ``torch``, ``PIL`` and ``transformers``, so the file can be shipped next
to a checkpoint as remote code.

Media placement
---------------
Every image or video of a sample is marked in its text by one ``<visual>`` placeholder token (the processor's
``image_token`` and ``video_token``). Media items are matched to placeholders left to right in this order:

* ``media=[[item, item, ...], ...]`` (one list per sample) gives the order explicitly; an item is an image (PIL
  image, ``(H, W, C)`` / ``(C, H, W)`` array or tensor, or a path / URL) or a video (``(F, H, W, C)`` array or
  tensor, or a list of frames);
* otherwise ``images`` then ``videos``: a sample's images fill the first placeholders, its videos the
  following ones.

A text without any ``<visual>`` and exactly one media item gets ``<visual>`` prepended (caption style).

Keyword arguments
-----------------
As in transformers' processors (``CosmoProcessorKwargs``): tokenizer arguments (``padding``, ``max_length``,
``truncation``, ``padding_side``, ``add_special_tokens``, ...) and image processor arguments (``do_rescale``,
``size``, ...) flat or grouped in ``text_kwargs`` / ``images_kwargs`` / ``videos_kwargs`` / ``common_kwargs``;
``num_frames`` (``videos_kwargs``) subsamples videos; ``return_labels`` builds training rows. Defaults: padding to
the longest sequence and PyTorch tensors, unless the tokenizer was configured otherwise. Video frames go through
the image processor, with its ``images_kwargs`` updated by the image-processor keys of ``videos_kwargs``.

Outputs
-------
``input_ids`` / ``attention_mask`` ``(B, T)``; ``pixel_values`` float ``(B, M, F, C, H, W)`` with ``M`` the
largest media count of the batch and ``F`` the largest frame count (an image has one frame), zero padded;
``media_mask`` ``(B, M)`` and ``frame_mask`` ``(B, M, F)`` (bool, ``True`` for real media / frames). A batch
without any media has no ``pixel_values``, ``media_mask`` or ``frame_mask``. With ``return_labels=True`` also
``labels`` (see :meth:`CosmoProcessor.build_labels`).

Chat template
-------------
The processor carries a chat template (``default_chat_template``) that renders messages in the model's own prompt
format: image / video items become ``<visual>``, text pieces are joined by a space, every assistant turn ends with
``<|endofchunk|>``. ``apply_chat_template(..., tokenize=True)`` hands the media to ``__call__`` in message order
(images and videos interleaved), as ``media``.
"""

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput
from transformers.video_utils import VideoInput

IGNORE_INDEX = -100

# Fill values of the per-token outputs when padding.
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1, "offset_mapping": (0, 0),
               "labels": IGNORE_INDEX, "mm_token_type_ids": 0}
# Frame sampling arguments of `videos_kwargs` (the other video keys are image processor arguments).
_SAMPLING_KEYS = ("num_frames", "fps", "do_sample_frames", "video_metadata", "return_metadata", "return_tensors")
_TEXT_ONLY_KEYS = ("padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side", "return_tensors",
                   "return_mm_token_type_ids", "return_text_replacement_offsets", "return_attention_mask")

def _is_image(x: Any) -> bool:
    if isinstance(x, Image.Image):
        return True
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.ndim in (2, 3)
    return False


def _is_video(x: Any) -> bool:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.ndim == 4
    if isinstance(x, (list, tuple)) and len(x) > 0:
        return all(_is_image(f) for f in x)
    return False


def _is_text(x: Any) -> bool:
    if isinstance(x, str):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, str) for t in x)


def _to_frame(x: Any) -> Any:
    """Normalise one image / frame for the image processor (uint8 ``HWC`` arrays become PIL images)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim == 3 and x.shape[-1] not in (1, 3, 4) and x.shape[0] in (1, 3, 4):
            x = np.transpose(x, (1, 2, 0))  # CHW -> HWC
        if x.dtype == np.uint8:
            if x.ndim == 3 and x.shape[-1] == 1:
                x = x[..., 0]
            return Image.fromarray(x)
    return x


def _video_frames(video: Any) -> list:
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    return [video[i] for i in range(len(video))]


def _subsample(frames: list, n: int | None) -> list:
    """Uniformly subsample ``frames`` to ``n`` (keeps all when there are ``n`` or fewer)."""
    if n is None or len(frames) <= n:
        return frames
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i] for i in idx]


def _batch_media(arg: Any, name: str, is_item, batch_size: int) -> list[list] | None:
    """Turn the ``images`` / ``videos`` / ``media`` argument into one list per sample."""
    if arg is None:
        return None
    if is_item(arg):
        arg = [arg]
    if not isinstance(arg, (list, tuple)):
        raise TypeError(f"`{name}` must be a list (one entry per sample) or a single item, got {type(arg).__name__}.")
    # For `media`, a list of lists is always one list per sample (a video given as a list of frames inside it
    # would otherwise be ambiguous with a sample's list of images).
    nested = name == "media" and len(arg) > 0 and all(isinstance(a, (list, tuple)) for a in arg)
    if len(arg) > 0 and not nested and all(is_item(a) for a in arg):
        # flat list of items: all for a single sample, or one per sample
        if batch_size == 1:
            return [list(arg)]
        if len(arg) == batch_size:
            return [[a] for a in arg]
        raise ValueError(
            f"`{name}` is a flat list of {len(arg)} items for a batch of {batch_size} texts; pass one list per "
            "sample (e.g. [[item], [item, item], None]) to give a sample several items or none."
        )
    if len(arg) != batch_size:
        raise ValueError(f"`{name}` has {len(arg)} entries but there are {batch_size} texts.")
    out = []
    for i, a in enumerate(arg):
        if a is None:
            out.append([])
        elif is_item(a) and not (nested and isinstance(a, (list, tuple))):
            out.append([a])
        elif isinstance(a, (list, tuple)):
            for j, item in enumerate(a):
                if not is_item(item):
                    raise TypeError(f"`{name}` of sample {i}, item {j}: unsupported type {type(item).__name__}.")
            out.append(list(a))
        else:
            raise TypeError(f"`{name}` of sample {i}: unsupported type {type(a).__name__}.")
    return out


def _is_image_or_path(x: Any) -> bool:
    return _is_image(x) or isinstance(x, str)


def _load_image(obj: Any) -> Any:
    """A path, URL or base64 string -> PIL image (transformers' loader)."""
    from transformers.image_utils import load_image

    return load_image(obj)


def _content_blocks(message: dict) -> list[dict]:
    """The image / video blocks of one chat message, in order."""
    content = message.get("content") or []
    if isinstance(content, str):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") in ("image", "video")]


def _block_object(block: dict) -> Any:
    """The media object of an image / video block (the item itself, a URL or a path), or None."""
    keys = ("image", "url", "path", "base64") if block["type"] == "image" else ("video", "url", "path")
    return next((block[k] for k in keys if block.get(k) is not None), None)


def _check_texts(text: Any) -> list[str]:
    texts = [text] if isinstance(text, str) else list(text)
    if len(texts) == 0:
        raise ValueError("`text` is an empty list.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"Sample {i}: text must be a str, got {type(t).__name__}.")
        if not t.strip():
            raise ValueError(f"Sample {i}: text is empty or whitespace only.")
    return texts


def _explicit_padding_side(kwargs: dict) -> str | None:
    """The ``padding_side`` the caller passed (flat, in ``text_kwargs`` or in ``common_kwargs``), if any."""
    for source in (kwargs, kwargs.get("text_kwargs") or {}, kwargs.get("common_kwargs") or {}):
        if source.get("padding_side"):
            return source["padding_side"]
    return None


def _padding_strategy(padding: Any) -> str | None:
    """``"longest"``, ``"max_length"`` or None (no padding) from the tokenizer-style ``padding`` argument."""
    padding = getattr(padding, "value", padding)
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        return "max_length"
    if padding in (False, None, "do_not_pad"):
        return None
    raise ValueError(f"Unsupported padding={padding!r}; use True, 'longest', 'max_length' or False.")


def _truncates(truncation: Any) -> bool:
    truncation = getattr(truncation, "value", truncation)
    return truncation not in (None, False, "do_not_truncate")


def _pad_row(row: list, fill: Any, target: int, side: str) -> list:
    padding = [fill] * (target - len(row))
    return padding + row if side == "left" else row + padding


def _scatter_media(layout: list[list[tuple[str, int, int]]], pixels: dict) -> dict:
    """Per-kind preprocessed frames -> zero-padded ``(B, M, F, C, H, W)`` pixel values with their masks."""
    frame_shape = next(iter(pixels.values())).shape[1:]
    max_media = max(len(entries) for entries in layout)
    max_frames = max(n for entries in layout for _, _, n in entries)
    out = np.zeros((len(layout), max_media, max_frames) + frame_shape, dtype=np.float32)  # (B, M, F, C, H, W)
    media_mask = np.zeros((len(layout), max_media), dtype=bool)  # (B, M)
    frame_mask = np.zeros((len(layout), max_media, max_frames), dtype=bool)  # (B, M, F)
    for b, entries in enumerate(layout):
        for m, (kind, start, n) in enumerate(entries):
            out[b, m, :n] = pixels[kind][start : start + n]
            media_mask[b, m] = True
            frame_mask[b, m, :n] = True
    return {"pixel_values": out, "media_mask": media_mask, "frame_mask": frame_mask}


_CHAT_TEMPLATE = """\
{%- macro render(content, ns) -%}
{%- if content is string -%}{%- set content = [{'type': 'text', 'text': content}] -%}{%- endif -%}
{%- for item in content -%}
{%- if item is string -%}{%- set piece = item -%}
{%- elif item['type'] == 'text' -%}{%- set piece = item['text'] -%}
{%- elif item['type'] in ['image', 'video'] -%}{%- set piece = MEDIA -%}
{%- else -%}{%- set piece = '' -%}
{%- endif -%}
{%- if piece -%}
{%- if ns.text and not ns.text[-1].isspace() and not piece[0].isspace() and not ns.text.endswith(MEDIA) \
and not piece.startswith(MEDIA) and not piece.startswith(ENDOFCHUNK) -%}
{%- set piece = ' ' + piece -%}
{%- endif -%}
{%- set ns.text = ns.text + piece -%}{{ piece }}
{%- endif -%}
{%- endfor -%}
{%- endmacro -%}
{%- set ns = namespace(text='') -%}
{%- for message in messages -%}
{%- set content = message['content'] if message['content'] is defined and message['content'] else '' -%}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}{{ render(content, ns) }}{{ ENDOFCHUNK }}{%- endgeneration -%}
{%- set ns.text = ns.text + ENDOFCHUNK -%}
{%- else -%}{{ render(content, ns) }}
{%- endif -%}
{%- endfor -%}
"""


def default_chat_template(media_token: str = "<visual>", endofchunk_token: str = "<|endofchunk|>") -> str:
    """The Jinja chat template of the model's prompt format (the same text as ``prompts.messages_to_prompt``)."""
    media, endofchunk = json.dumps(media_token), json.dumps(endofchunk_token)
    return f"{{%- set MEDIA = {media} -%}}{{%- set ENDOFCHUNK = {endofchunk} -%}}\n" + _CHAT_TEMPLATE


class CosmoProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of :meth:`CosmoProcessor.__call__`.

    return_labels (`bool`): training format: append ``<|endofchunk|>`` (unless the text already ends with it) and
        ``</s>``, and return ``labels``; padded on the right unless ``padding_side`` is given.
    """

    return_labels: bool


class CosmoProcessor(ProcessorMixin):
    r"""Image processor + tokenizer for interleaved image/video-text models (CosMo).

    Args:
        image_processor: any ``transformers`` image processor (applied to images and to every video frame).
        tokenizer: a tokenizer that knows ``media_token`` and ``endofchunk_token`` as special tokens.
        media_token (`str`, defaults to ``"<visual>"``): placeholder marking one image or video in the text.
        endofchunk_token (`str`, defaults to ``"<|endofchunk|>"``): marks the end of the text belonging to a
            media item (end of a caption / answer).
        max_num_frames (`int`, *optional*): upper bound on the frames kept per video (uniform subsampling).
        chat_template (`str`, *optional*): a chat template; defaults to the model's prompt format
            (:func:`default_chat_template`).
    """

    valid_processor_kwargs = CosmoProcessorKwargs
    # Defaults that differ from the tokenizer's: pad to the longest sequence, return PyTorch tensors. A tokenizer
    # configured with its own padding / max_length keeps them (transformers' kwargs merging order).
    text_kwargs = {"padding": True, "return_tensors": "pt"}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        media_token: str = "<visual>",
        endofchunk_token: str = "<|endofchunk|>",
        max_num_frames: int | None = None,
        chat_template: str | None = None,
        **kwargs,
    ):
        if tokenizer is None or image_processor is None:
            raise ValueError("CosmoProcessor needs both an `image_processor` and a `tokenizer`.")
        self.media_token = media_token
        self.endofchunk_token = endofchunk_token
        self.max_num_frames = max_num_frames
        for tok in (media_token, endofchunk_token):
            ids = tokenizer.encode(tok, add_special_tokens=False)
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ValueError(
                    f"The tokenizer does not know {tok!r} as a single token; add it with "
                    f"`tokenizer.add_special_tokens({{'extra_special_tokens': [{tok!r}]}})`."
                )
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token` first.")
        if chat_template is None:
            chat_template = default_chat_template(media_token, endofchunk_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # token properties
    # ------------------------------------------------------------------------------------------------------------
    @property
    def media_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.media_token)

    @property
    def endofchunk_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.endofchunk_token)

    @property
    def image_token(self) -> str:
        """The placeholder of an image: ``media_token``."""
        return self.media_token

    @property
    def video_token(self) -> str:
        """The placeholder of a video: ``media_token`` too (one token per video, whatever its frame count)."""
        return self.media_token

    @property
    def image_token_id(self) -> int:
        return self.media_token_id

    @property
    def video_token_id(self) -> int:
        return self.media_token_id

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "media_mask", "frame_mask"]

    # ------------------------------------------------------------------------------------------------------------
    # chat messages
    # ------------------------------------------------------------------------------------------------------------
    def _multimodal_inputs_from_conversations(self, conversations, audio_loading_params=None,
                                              load_audio_from_video: bool = False):
        """The media of each conversation in message order, images and videos interleaved, handed to `__call__`
        as `media` (transformers' default splits them into `images` and `videos`, losing their order). Paths and
        URLs are loaded here: images with `load_image`, videos with `load_video` (all frames, or `max_num_frames`
        sampled uniformly)."""
        batch_media = [[self._load_block(block) for message in conversation
                        for block in _content_blocks(message) if _block_object(block) is not None]
                       for conversation in conversations]
        empty = [[] for _ in conversations]
        return empty, empty, [], {"media": batch_media if any(batch_media) else None}

    def _load_block(self, block: dict) -> Any:
        obj = _block_object(block)
        if block["type"] == "image":
            return _load_image(obj) if isinstance(obj, str) else obj
        if isinstance(obj, str):
            from transformers.video_utils import load_video

            video = load_video(obj, num_frames=self.max_num_frames, backend="pyav")
            return video[0] if isinstance(video, tuple) else video  # (F, H, W, C)
        if isinstance(obj, (list, tuple)):
            return [_load_image(f) if isinstance(f, str) else f for f in obj]
        return obj

    # ------------------------------------------------------------------------------------------------------------
    # main entry point
    # ------------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        videos: VideoInput | None = None,
        media: list | None = None,
        **kwargs: Unpack[CosmoProcessorKwargs],
    ) -> BatchFeature:
        """Tokenize ``text`` and preprocess its images / videos.

        Args:
            images: per sample a list of images (PIL, ``HWC``/``CHW`` arrays, paths or URLs) or ``None``; a single
                image or a flat list (one image per text, or all images of a single text) is accepted too.
            text: a string or a list of strings, ``<visual>`` marking each media item.
            videos: per sample a list of videos (``(F, H, W, C)`` uint8 arrays or lists of frames) or ``None``;
                placed after the sample's images.
            media: per sample a mixed, ordered list of images and videos (instead of ``images`` / ``videos``).
            **kwargs: see :class:`CosmoProcessorKwargs` and the module docstring. ``padding_side`` defaults to
                right with ``return_labels``, else to the tokenizer's (the shipped processors pad prompts on the
                left, as batched generation and the pipelines need). ``max_length`` without ``truncation`` raises
                for longer sequences; ``truncation`` cuts from the right but never drops a ``<visual>``.
        """
        # transformers processors take `images` first; accept texts given positionally first as well
        if _is_text(images) and not _is_text(text):
            text, images = images, text
        if text is None:
            raise ValueError("`text` is required: one string per sample, with a `<visual>` per image / video.")
        merged = self._merge_kwargs(
            CosmoProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        texts = _check_texts(text)
        per_sample = self._gather_media(images, videos, media, len(texts))
        texts = self._place_media_tokens(texts, per_sample)

        text_kwargs = dict(merged["text_kwargs"])
        return_tensors = text_kwargs.get("return_tensors")
        return_labels = bool(merged.get("return_labels", False))
        side = _explicit_padding_side(kwargs) or ("right" if return_labels else text_kwargs.get("padding_side"))
        data = self._encode(texts, text_kwargs, return_labels)
        if merged.get("return_mm_token_type_ids"):
            data["mm_token_type_ids"] = [self._mm_token_types(x, m) for x, m in zip(data["input_ids"], per_sample)]
        data = self._pad(data, text_kwargs, side or self.tokenizer.padding_side or "right", return_tensors)
        if merged.get("return_text_replacement_offsets"):
            data["text_replacement_offsets"] = [self._placeholder_offsets(t, m) for t, m in zip(texts, per_sample)]
        if any(per_sample):
            data.update(self._process_media(per_sample, merged["images_kwargs"], merged["videos_kwargs"]))
        skip = self.skip_tensor_conversion
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=skip)

    def _gather_media(self, images, videos, media, batch_size: int) -> list[list]:
        """One ordered list of media items per sample."""
        if media is not None and (images is not None or videos is not None):
            raise ValueError("Pass either `media` (ordered, mixed) or `images` / `videos`, not both.")
        if media is not None:
            per_sample = _batch_media(media, "media", lambda x: _is_image(x) or _is_video(x), batch_size)
        else:
            imgs = _batch_media(images, "images", _is_image_or_path, batch_size) or [[] for _ in range(batch_size)]
            vids = _batch_media(videos, "videos", _is_video, batch_size) or [[] for _ in range(batch_size)]
            per_sample = [list(a) + list(b) for a, b in zip(imgs, vids)]
        return [[_load_image(m) if isinstance(m, str) else m for m in items] for items in per_sample]

    def _place_media_tokens(self, texts: list[str], per_sample: list[list]) -> list[str]:
        """Checks one placeholder per media item; prepends it to a text without any and a single item."""
        out = []
        for i, (t, items) in enumerate(zip(texts, per_sample)):
            count = t.count(self.media_token)
            if count == 0 and len(items) == 1:
                t, count = self.media_token + t, 1
            if count != len(items):
                raise ValueError(
                    f"Sample {i}: the text has {count} {self.media_token!r} placeholder(s) but {len(items)} media "
                    f"item(s) (images + videos) were given; use one {self.media_token!r} per image or video."
                )
            out.append(t)
        return out

    # ------------------------------------------------------------------------------------------------------------
    # text helpers
    # ------------------------------------------------------------------------------------------------------------
    def _training_text(self, text: str) -> str:
        if not text.rstrip().endswith(self.endofchunk_token):
            text = text + self.endofchunk_token
        return text

    def _encode(self, texts: list[str], text_kwargs: dict, return_labels: bool) -> dict:
        """Unpadded per-sample token lists: the tokenizer's outputs, ``</s>`` and ``labels`` for training rows,
        then the length check / truncation."""
        if return_labels:
            texts = [self._training_text(t) for t in texts]
        tokenizer_kwargs = {k: v for k, v in text_kwargs.items() if k not in _TEXT_ONLY_KEYS}
        encoded = self.tokenizer(texts, padding=False, truncation=False, **tokenizer_kwargs)
        data = {k: [list(x) for x in v] for k, v in encoded.items() if k == "input_ids" or k in _PAD_VALUES}
        if return_labels:
            eos = self.tokenizer.eos_token_id
            for key, rows in data.items():
                fill = eos if key == "input_ids" else (1 if key == "attention_mask" else _PAD_VALUES[key])
                for row in rows:
                    row.append(fill)
        if "attention_mask" not in data:
            data["attention_mask"] = [[1] * len(x) for x in data["input_ids"]]
        max_length = text_kwargs.get("max_length")
        keep = self._kept_lengths(data["input_ids"], max_length, _truncates(text_kwargs.get("truncation")))
        data = {k: [row[:n] for row, n in zip(rows, keep)] for k, rows in data.items()}
        if return_labels:
            data["labels"] = [self.build_labels(x) for x in data["input_ids"]]
        return data

    def _kept_lengths(self, ids: list[list[int]], max_length: int | None, truncation: bool) -> list[int]:
        """Tokens kept per sample: all, or ``max_length`` when truncating (never dropping a ``<visual>``)."""
        if max_length is None:
            return [len(x) for x in ids]
        media_id = self.media_token_id
        keep = []
        for i, x in enumerate(ids):
            if len(x) <= max_length:
                keep.append(len(x))
                continue
            if not truncation:
                raise ValueError(
                    f"Sample {i} is {len(x)} tokens long, more than max_length={max_length}; raise `max_length`, "
                    "shorten the text, or pass `truncation=True`."
                )
            n_all, n_kept = x.count(media_id), x[:max_length].count(media_id)
            if n_kept != n_all:
                raise ValueError(
                    f"Sample {i}: truncating its {len(x)} tokens to max_length={max_length} would drop "
                    f"{n_all - n_kept} of its {n_all} {self.media_token!r} token(s) (and their media); raise "
                    "`max_length` or remove media / text from the sample."
                )
            keep.append(max_length)
        return keep

    def _check_length(self, ids: list[list[int]], max_length: int | None, truncation: bool) -> list[list[int]]:
        return [x[:n] for x, n in zip(ids, self._kept_lengths(ids, max_length, truncation))]

    def _mm_token_types(self, ids: list[int], items: list) -> list[int]:
        """Per token: 1 for the ``<visual>`` of an image, 2 for that of a video, 0 otherwise."""
        kinds = iter(2 if _is_video(item) else 1 for item in items)
        media_id = self.media_token_id
        return [next(kinds, 1) if t == media_id else 0 for t in ids]

    def _placeholder_offsets(self, text: str, items: list) -> list[dict]:
        """Character spans of the placeholders of ``text`` (each stands for itself: nothing is expanded)."""
        out, start = [], 0
        for item in items:
            start = text.index(self.media_token, start)
            span = (start, start + len(self.media_token))
            out.append({"type": "video" if _is_video(item) else "image", "span": span, "new_span": span,
                        "text": self.media_token, "replacement": self.media_token})
            start = span[1]
        return out

    def build_labels(self, input_ids: Sequence[int]) -> list[int]:
        """Language-modelling labels for one unpadded sequence.

        ``-100`` at: ``<s>``, pad, ``<visual>`` tokens, every token before the first ``<visual>``, and every token
        strictly after an ``<|endofchunk|>`` up to and including the next ``<visual>`` (so a ``</s>`` after the
        final ``<|endofchunk|>`` is ignored too). The ``<|endofchunk|>`` tokens themselves are predicted.
        """
        media_id, eoc_id = self.media_token_id, self.endofchunk_token_id
        ignore = {self.tokenizer.pad_token_id, self.tokenizer.bos_token_id}
        labels = []
        seen_media = False
        after_chunk = False
        for t in input_ids:
            t = int(t)
            if t == media_id:
                labels.append(IGNORE_INDEX)
                seen_media, after_chunk = True, False
                continue
            if not seen_media or after_chunk or t in ignore:
                labels.append(IGNORE_INDEX)
            else:
                labels.append(t)
            if t == eoc_id:
                after_chunk = True
        return labels

    def _pad(self, data: dict, text_kwargs: dict, side: str, return_tensors) -> dict:
        """Pads every per-token list to the longest sequence or to ``max_length`` (``padding``), on ``side``."""
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        target = self._padded_length([len(x) for x in data["input_ids"]], text_kwargs)
        if target is None:
            if return_tensors is not None and len({len(x) for x in data["input_ids"]}) > 1:
                raise ValueError(
                    "Sequences have different lengths and padding=False; pass padding=True to return tensors."
                )
        else:
            pad_id = self.tokenizer.pad_token_id
            for key, rows in data.items():
                fill = pad_id if key == "input_ids" else _PAD_VALUES[key]
                data[key] = [_pad_row(row, fill, target, side) for row in rows]
        if text_kwargs.get("return_attention_mask") is False:
            data.pop("attention_mask")
        if return_tensors is not None or target is not None:
            data = {k: np.asarray(v, dtype=np.int64) for k, v in data.items()}
        return data

    def _padded_length(self, lengths: list[int], text_kwargs: dict) -> int | None:
        padding = _padding_strategy(text_kwargs.get("padding"))
        max_length = text_kwargs.get("max_length")
        if padding == "longest":
            target = max(lengths)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs `max_length`.")
            target = max_length
        else:
            return None
        multiple = text_kwargs.get("pad_to_multiple_of")
        return -(-target // multiple) * multiple if multiple else target

    # ------------------------------------------------------------------------------------------------------------
    # media
    # ------------------------------------------------------------------------------------------------------------
    def _frames_per_video(self, videos_kwargs: dict) -> int | None:
        """Frames kept per video: ``num_frames`` (unless ``do_sample_frames=False``), capped by ``max_num_frames``."""
        if videos_kwargs.get("fps") is not None:
            raise ValueError("Sampling videos by `fps` needs their frame rate; pass `num_frames` instead.")
        n_frames = None if videos_kwargs.get("do_sample_frames") is False else videos_kwargs.get("num_frames")
        if self.max_num_frames is not None:
            n_frames = self.max_num_frames if n_frames is None else min(n_frames, self.max_num_frames)
        if n_frames is not None and n_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {n_frames}.")
        return n_frames

    def _frame_kwargs(self, images_kwargs: dict, videos_kwargs: dict) -> tuple[dict, dict]:
        """Image processor arguments for images and for video frames (``images_kwargs`` updated by the image
        processor keys of ``videos_kwargs``)."""
        image_kwargs = {k: v for k, v in images_kwargs.items() if k != "return_tensors"}
        valid = set(ProcessingKwargs.__annotations__["images_kwargs"].__annotations__)
        valid |= set(getattr(getattr(self.image_processor, "valid_kwargs", None), "__annotations__", {}))
        video_kwargs = {k: v for k, v in videos_kwargs.items() if k in valid and k not in _SAMPLING_KEYS}
        return image_kwargs, {**image_kwargs, **video_kwargs}

    def _process_media(self, per_sample: list[list], images_kwargs: dict, videos_kwargs: dict) -> dict:
        n_frames = self._frames_per_video(videos_kwargs)
        groups = {"image": [], "video": []}  # frames to preprocess, per kind
        layout: list[list[tuple[str, int, int]]] = []  # per sample, per media: (kind, first frame, frame count)
        for i, items in enumerate(per_sample):
            entries = []
            for j, item in enumerate(items):
                if _is_video(item):
                    kind, frames = "video", _subsample(_video_frames(item), n_frames)
                else:
                    kind, frames = "image", [item]
                if not frames:
                    raise ValueError(f"Sample {i}, media {j}: the video has no frames.")
                entries.append((kind, len(groups[kind]), len(frames)))
                groups[kind].extend(_to_frame(f) for f in frames)
            layout.append(entries)
        kwargs = dict(zip(("image", "video"), self._frame_kwargs(images_kwargs, videos_kwargs)))
        pixels = {kind: self._pixels(frames, kwargs[kind]) for kind, frames in groups.items() if frames}
        if len({p.shape[1:] for p in pixels.values()}) > 1:
            raise ValueError("Images and video frames were preprocessed to different sizes; give them the same size.")
        return _scatter_media(layout, pixels)

    def _pixels(self, frames: list, kwargs: dict) -> np.ndarray:
        pixels = self.image_processor(images=frames, return_tensors="np", **kwargs)["pixel_values"]
        pixels = np.asarray(pixels, dtype=np.float32)  # (N, C, H, W)
        if pixels.ndim != 4 or pixels.shape[0] != len(frames):
            raise ValueError(
                f"The image processor returned pixel values of shape {pixels.shape}; expected (frames, C, H, W)."
            )
        return pixels

    # ------------------------------------------------------------------------------------------------------------
    # other entry points
    # ------------------------------------------------------------------------------------------------------------
    def contrastive_text_inputs(
        self,
        texts: str | Sequence[str],
        return_tensors: str | None = "pt",
        max_length: int | None = None,
        truncation: bool = False,
    ) -> BatchFeature:
        """Tokenize texts exactly as the text half of a training pair, ``<s><visual>{text}<|endofchunk|></s>``,
        right padded, without pixel values (for text embeddings of contrastive objectives)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("`texts` is empty.")
        formatted = []
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"Sample {i}: text is empty or not a string.")
            if self.media_token in t:
                raise ValueError(f"Sample {i}: contrastive texts must not contain {self.media_token!r}.")
            formatted.append(self.media_token + self._training_text(t))
        eos = self.tokenizer.eos_token_id
        ids = [self.tokenizer.encode(t, add_special_tokens=True) + [eos] for t in formatted]
        if max_length is not None and truncation:
            # keep `<s><visual>` and the closing `<|endofchunk|></s>` when cutting a long text
            if max_length < 5:
                raise ValueError(f"max_length={max_length} is too short for a contrastive text (needs at least 5).")
            tail = [self.endofchunk_token_id, eos]
            ids = [x if len(x) <= max_length else x[: max_length - 2] + tail for x in ids]
        ids = self._check_length(ids, max_length, False)
        data = {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}
        data = self._pad(data, {"padding": True, "max_length": max_length}, "right", return_tensors)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_generation(self, texts, skip_special_tokens: bool = True):
        """Cut generated text at the first ``<|endofchunk|>`` and drop special tokens.

        Accepts a string, a list of strings, or token ids (a list / tensor, 1-D or 2-D), and returns a string or a
        list of strings accordingly.
        """
        if isinstance(texts, (torch.Tensor, np.ndarray)):
            texts = texts.tolist()
        single = isinstance(texts, str) or (
            isinstance(texts, (list, tuple)) and len(texts) > 0 and all(isinstance(t, int) for t in texts)
        )
        items = [texts] if single else list(texts)
        out = []
        specials = [t for t in self.tokenizer.all_special_tokens if t != self.endofchunk_token]
        specials.append(self.media_token)
        for item in items:
            if not isinstance(item, str):
                item = self.tokenizer.decode(list(item), skip_special_tokens=False)
            item = item.split(self.endofchunk_token, 1)[0]
            if skip_special_tokens:
                for s in specials:
                    item = item.replace(s, "")
            out.append(item.strip())
        return out[0] if single else out


__all__ = ["CosmoProcessor", "CosmoProcessorKwargs", "IGNORE_INDEX", "default_chat_template"]
