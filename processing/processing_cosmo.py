"""Processor for CosMo-style interleaved image/video + text models.

Self-contained: imports only ``numpy``, ``torch``, ``PIL`` and ``transformers``, so the file can be shipped next
to a checkpoint as remote code.

Media placement
---------------
Every image or video of a sample is marked in its text by one ``<visual>`` placeholder token. Media items are
matched to placeholders left to right in this order:

* ``media=[[item, item, ...], ...]`` (one list per sample) gives the order explicitly; an item is an image (PIL
  image, ``(H, W, C)`` / ``(C, H, W)`` array or tensor) or a video (``(F, H, W, C)`` array or tensor, or a
  list of frames);
* otherwise ``images`` then ``videos``: a sample's images fill the first placeholders, its videos the
  following ones.

A text without any ``<visual>`` and exactly one media item gets ``<visual>`` prepended (caption style).

Outputs
-------
``input_ids`` / ``attention_mask`` ``(B, T)``; ``pixel_values`` float ``(B, M, F, C, H, W)`` with ``M`` the
largest media count of the batch and ``F`` the largest frame count (an image has one frame), zero padded;
``media_mask`` ``(B, M)`` and ``frame_mask`` ``(B, M, F)`` (bool, ``True`` for real media / frames). A batch
without any media has no ``pixel_values``, ``media_mask`` or ``frame_mask``. With ``return_labels=True`` also
``labels`` (see :meth:`CosmoProcessor.build_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

IGNORE_INDEX = -100


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


class CosmoProcessor(ProcessorMixin):
    r"""Image processor + tokenizer for interleaved image/video-text models (CosMo).

    Args:
        image_processor: any ``transformers`` image processor (applied to images and to every video frame).
        tokenizer: a tokenizer that knows ``media_token`` and ``endofchunk_token`` as special tokens.
        media_token (`str`, defaults to ``"<visual>"``): placeholder marking one image or video in the text.
        endofchunk_token (`str`, defaults to ``"<|endofchunk|>"``): marks the end of the text belonging to a
            media item (end of a caption / answer).
        max_num_frames (`int`, *optional*): upper bound on the frames kept per video (uniform subsampling).
        chat_template (`str`, *optional*): a chat template, stored with the processor.
    """

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
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "media_mask", "frame_mask"]

    # ------------------------------------------------------------------------------------------------------------
    # chat messages
    # ------------------------------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, chat_template=None, tokenize: bool = False, return_dict: bool = False,
                            continue_final_message: bool = False, add_generation_prompt: bool = True,
                            processor_kwargs: dict | None = None, **kwargs):
        """Messages -> the interleaved prompt (`messages_to_prompt`): each image / video item becomes `<visual>`,
        every finished assistant turn ends with `<|endofchunk|>`; with `tokenize=True` the prompts and their media
        (in message order, images and videos mixed) go through `__call__` (what the image-text-to-text pipeline
        calls with chats). Written here because transformers' template path hands images and videos to the
        processor as two lists, losing their order in interleaved documents.

        conversation: one list of messages, or a list of them (a batch); `chat_template` must be None (the format
        is fixed by the model); `add_generation_prompt` needs nothing (a prompt ending with a user turn is ready);
        `continue_final_message` leaves a final assistant turn open (prefill). Other keyword arguments (and
        `processor_kwargs`) go to `__call__`."""
        from .prompts import messages_to_prompt

        if chat_template is not None:
            raise ValueError("CosmoProcessor builds prompts itself (see messages_to_prompt); do not pass chat_template.")
        conversations = [conversation] if conversation and isinstance(conversation[0], dict) else list(conversation)
        texts, media = [], []
        for messages in conversations:
            prompt = messages_to_prompt(messages, media_token=self.media_token, endofchunk_token=self.endofchunk_token)
            text = prompt.text
            if continue_final_message and messages[-1].get("role") == "assistant" and text.endswith(self.endofchunk_token):
                text = text[: -len(self.endofchunk_token)]
            texts.append(text)
            media.append(prompt.media)
        if not tokenize:
            return texts[0] if isinstance(conversation[0], dict) else texts
        call_kwargs = {**(processor_kwargs or {}), **{k: v for k, v in kwargs.items() if k != "return_assistant_tokens_mask"}}
        has_media = any(media)
        if has_media and not all(len(m) == t.count(self.media_token) for m, t in zip(media, texts)):
            raise ValueError("Every image / video item of the messages must carry its object ('image': PIL image or "
                             "path, 'video': frames) when tokenize=True.")
        out = self(text=texts, media=media if has_media else None, **call_kwargs)
        return out if return_dict else out["input_ids"]

    # ------------------------------------------------------------------------------------------------------------
    # main entry point
    # ------------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        videos=None,
        media=None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        padding_side: str | None = None,
        max_length: int | None = None,
        truncation: bool = False,
        return_labels: bool = False,
        num_frames: int | None = None,
        pad_to_multiple_of: int | None = None,
        images_kwargs: dict | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize ``text`` and preprocess its images / videos.

        Args:
            images: per sample a list of images (PIL, ``HWC``/``CHW`` arrays) or ``None``; a single image or a flat
                list (one image per text, or all images of a single text) is accepted too.
            text: a string or a list of strings, ``<visual>`` marking each media item.
            videos: per sample a list of videos (``(F, H, W, C)`` uint8 arrays or lists of frames) or ``None``;
                placed after the sample's images.
            media: per sample a mixed, ordered list of images and videos (instead of ``images`` / ``videos``).
            return_tensors: ``"pt"`` (default), ``"np"`` or ``None``.
            padding: ``True`` / ``"longest"``, ``"max_length"`` (pad to ``max_length``) or ``False``.
            padding_side: ``"right"`` or ``"left"`` (default: right with ``return_labels``, else the tokenizer's; the
                shipped processors pad prompts on the left, as batched generation and the pipelines need).
            max_length: longest allowed sequence (tokens, special tokens included).
            truncation: cut sequences longer than ``max_length`` (from the right) instead of raising.
            return_labels: training format: append ``<|endofchunk|>`` (unless the text already ends with it) and
                ``</s>``, and return ``labels``.
            num_frames: uniformly subsample every video to this many frames (clamped by ``max_num_frames``).
            pad_to_multiple_of: round the padded length up to a multiple of this.
            images_kwargs: extra keyword arguments for the image processor.
        """
        # transformers processors take `images` first; accept texts given positionally first as well
        if _is_text(images) and not _is_text(text):
            text, images = images, text
        if kwargs:
            raise TypeError(f"CosmoProcessor.__call__ got unexpected keyword arguments: {sorted(kwargs)}")
        if text is None:
            raise ValueError("`text` is required: one string per sample, with a `<visual>` per image / video.")
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) == 0:
            raise ValueError("`text` is an empty list.")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"Sample {i}: text must be a str, got {type(t).__name__}.")
            if not t.strip():
                raise ValueError(f"Sample {i}: text is empty or whitespace only.")
        batch_size = len(texts)

        if media is not None and (images is not None or videos is not None):
            raise ValueError("Pass either `media` (ordered, mixed) or `images` / `videos`, not both.")
        if media is not None:
            per_sample = _batch_media(media, "media", lambda x: _is_image(x) or _is_video(x), batch_size)
        else:
            imgs = _batch_media(images, "images", _is_image, batch_size) or [[] for _ in range(batch_size)]
            vids = _batch_media(videos, "videos", _is_video, batch_size) or [[] for _ in range(batch_size)]
            per_sample = [list(a) + list(b) for a, b in zip(imgs, vids)]

        # placeholders
        for i, t in enumerate(texts):
            count = t.count(self.media_token)
            n_media = len(per_sample[i])
            if count == 0 and n_media == 1:
                texts[i] = t = self.media_token + t
                count = 1
            if count != n_media:
                raise ValueError(
                    f"Sample {i}: the text has {count} {self.media_token!r} placeholder(s) but {n_media} media "
                    f"item(s) (images + videos) were given; use one {self.media_token!r} per image or video."
                )

        if return_labels:
            texts = [self._training_text(t) for t in texts]
        ids = [self.tokenizer.encode(t, add_special_tokens=True) for t in texts]
        if return_labels:
            eos = self.tokenizer.eos_token_id
            ids = [x + [eos] for x in ids]
        ids = self._check_length(ids, max_length, truncation)

        data = self._pad(
            ids,
            padding=padding,
            padding_side=padding_side,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            return_labels=return_labels,
            return_tensors=return_tensors,
        )
        if any(per_sample):
            data.update(self._process_media(per_sample, num_frames, images_kwargs or {}))
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------------------------------------
    # text helpers
    # ------------------------------------------------------------------------------------------------------------
    def _training_text(self, text: str) -> str:
        if not text.rstrip().endswith(self.endofchunk_token):
            text = text + self.endofchunk_token
        return text

    def _check_length(self, ids: list[list[int]], max_length: int | None, truncation: bool) -> list[list[int]]:
        if max_length is None:
            return ids
        media_id = self.media_token_id
        out = []
        for i, x in enumerate(ids):
            if len(x) <= max_length:
                out.append(x)
                continue
            if not truncation:
                raise ValueError(
                    f"Sample {i} is {len(x)} tokens long, more than max_length={max_length}; raise `max_length`, "
                    "shorten the text, or pass `truncation=True`."
                )
            kept = x[:max_length]
            n_all, n_kept = x.count(media_id), kept.count(media_id)
            if n_kept != n_all:
                raise ValueError(
                    f"Sample {i}: truncating its {len(x)} tokens to max_length={max_length} would drop "
                    f"{n_all - n_kept} of its {n_all} {self.media_token!r} token(s) (and their media); raise "
                    "`max_length` or remove media / text from the sample."
                )
            out.append(kept)
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

    def _pad(
        self,
        ids: list[list[int]],
        padding,
        padding_side,
        max_length,
        pad_to_multiple_of,
        return_labels: bool,
        return_tensors,
    ) -> dict:
        # Training rows (labels) start at position 0: right padding; prompts follow the tokenizer (left for generation).
        side = padding_side or ("right" if return_labels else getattr(self.tokenizer, "padding_side", None) or "right")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        labels = [self.build_labels(x) for x in ids] if return_labels else None
        masks = [[1] * len(x) for x in ids]

        if padding is True or padding == "longest":
            target = max(len(x) for x in ids)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs `max_length`.")
            target = max_length
        elif padding in (False, None, "do_not_pad"):
            target = None
        else:
            raise ValueError(f"Unsupported padding={padding!r}; use True, 'longest', 'max_length' or False.")
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of

        if target is None:
            if return_tensors is not None and len({len(x) for x in ids}) > 1:
                raise ValueError(
                    "Sequences have different lengths and padding=False; pass padding=True to return tensors."
                )
        else:
            pad_id = self.tokenizer.pad_token_id

            def pad(seq, value):
                fill = [value] * (target - len(seq))
                return fill + seq if side == "left" else seq + fill

            ids = [pad(x, pad_id) for x in ids]
            masks = [pad(m, 0) for m in masks]
            if labels is not None:
                labels = [pad(lab, IGNORE_INDEX) for lab in labels]

        data = {"input_ids": ids, "attention_mask": masks}
        if labels is not None:
            data["labels"] = labels
        if return_tensors is not None or target is not None:
            data = {k: np.asarray(v, dtype=np.int64) for k, v in data.items()}
        return data

    # ------------------------------------------------------------------------------------------------------------
    # media
    # ------------------------------------------------------------------------------------------------------------
    def _process_media(self, per_sample: list[list], num_frames: int | None, images_kwargs: dict) -> dict:
        n_frames = num_frames
        if self.max_num_frames is not None:
            n_frames = self.max_num_frames if n_frames is None else min(n_frames, self.max_num_frames)
        if n_frames is not None and n_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {n_frames}.")

        flat_frames: list = []
        layout: list[list[int]] = []  # per sample, per media: number of frames
        for i, items in enumerate(per_sample):
            counts = []
            for j, item in enumerate(items):
                if _is_video(item):
                    frames = _subsample(_video_frames(item), n_frames)
                    if len(frames) == 0:
                        raise ValueError(f"Sample {i}, media {j}: the video has no frames.")
                else:
                    frames = [item]
                flat_frames.extend(_to_frame(f) for f in frames)
                counts.append(len(frames))
            layout.append(counts)

        pixels = self.image_processor(images=flat_frames, return_tensors="np", **images_kwargs)["pixel_values"]
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[0] != len(flat_frames):
            raise ValueError(
                f"The image processor returned pixel values of shape {pixels.shape}; expected (frames, C, H, W)."
            )
        max_media = max(len(c) for c in layout)
        max_frames = max(max(c) for c in layout if c)
        out = np.zeros((len(per_sample), max_media, max_frames) + pixels.shape[1:], dtype=np.float32)
        media_mask = np.zeros((len(per_sample), max_media), dtype=bool)
        frame_mask = np.zeros((len(per_sample), max_media, max_frames), dtype=bool)
        k = 0
        for b, counts in enumerate(layout):
            for m, f in enumerate(counts):
                out[b, m, :f] = pixels[k : k + f]
                media_mask[b, m] = True
                frame_mask[b, m, :f] = True
                k += f
        return {"pixel_values": out, "media_mask": media_mask, "frame_mask": frame_mask}

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
        data = self._pad(ids, True, "right", max_length, None, False, return_tensors)
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


__all__ = ["CosmoProcessor", "IGNORE_INDEX"]
