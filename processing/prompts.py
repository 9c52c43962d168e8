"""Prompt builders for few-shot captioning / VQA and for chat-style messages.

All builders return plain text with one ``<visual>`` placeholder per image or video, ready for
:class:`CosmoProcessor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

MEDIA_TOKEN = "<visual>"
ENDOFCHUNK_TOKEN = "<|endofchunk|>"


def caption_prompt(
    shots: Sequence[str],
    query: bool = True,
    media_token: str = MEDIA_TOKEN,
    endofchunk_token: str = ENDOFCHUNK_TOKEN,
) -> str:
    """Few-shot captioning prompt.

    ``shots`` are the captions of the demonstration images (in the order the images are passed). Each becomes
    ``<visual>Output:{caption}<|endofchunk|>``; with ``query=True`` the prompt ends with ``<visual>Output:`` for
    the query image, so it needs ``len(shots) + 1`` images.
    """
    if isinstance(shots, str):
        raise TypeError("`shots` must be a list of captions, not a single string.")
    parts = [f"{media_token}Output:{c}{endofchunk_token}" for c in shots]
    if query:
        parts.append(f"{media_token}Output:")
    return "".join(parts)


def vqa_prompt(
    shots: Iterable[tuple[str, str]],
    question: str | None,
    media_token: str = MEDIA_TOKEN,
    endofchunk_token: str = ENDOFCHUNK_TOKEN,
) -> str:
    """Few-shot VQA prompt.

    Each ``(question, answer)`` shot becomes ``<visual>Question:{q} Short answer:{a}<|endofchunk|>``; the query
    ``question`` is appended as ``<visual>Question:{question} Short answer:`` (skipped when ``question`` is
    ``None``). Needs one image per shot plus one for the query.
    """
    parts = []
    for shot in shots:
        q, a = shot
        parts.append(f"{media_token}Question:{q} Short answer:{a}{endofchunk_token}")
    if question is not None:
        parts.append(f"{media_token}Question:{question} Short answer:")
    return "".join(parts)


class PromptWithMedia(NamedTuple):
    """Interleaved text plus its media, in placeholder order (usable as ``text, media = ...``)."""

    text: str
    media: list

    @property
    def images(self) -> list:
        return [m for m in self.media if not _looks_like_video(m)]

    @property
    def videos(self) -> list:
        return [m for m in self.media if _looks_like_video(m)]


def _looks_like_video(x: Any) -> bool:
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        return ndim == 4
    return isinstance(x, (list, tuple))


def _load_image(obj: Any) -> Any:
    if isinstance(obj, str):
        from PIL import Image

        with Image.open(obj) as im:
            return im.convert("RGB")
    return obj


def messages_to_prompt(
    messages: Sequence[dict],
    separator: str = " ",
    media_token: str = MEDIA_TOKEN,
    endofchunk_token: str = ENDOFCHUNK_TOKEN,
) -> PromptWithMedia:
    """Turn chat-style messages into interleaved text and the ordered list of their images / videos.

    ``messages`` look like ``[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text",
    "text": "..."}]}, {"role": "assistant", "content": "..."}]`` (``content`` may be a plain string). Image and
    video items become ``<visual>``; their ``image`` / ``video`` objects (a PIL image or an image file path; a
    ``(F, H, W, C)`` array or a list of frames) are collected in order into ``media``, to be passed as
    ``processor(text=[text], media=[media])``. Either every image / video item carries its object or none does
    (then ``media`` is empty and the caller supplies the media in placeholder order).

    Text pieces and turns are joined with ``separator`` where neither side already has whitespace (and not right
    after a ``<visual>``); every assistant turn ends with ``<|endofchunk|>``. A conversation ending with a user
    turn is therefore a prompt ready for generation. ``CosmoProcessor``'s chat template renders the same text.
    """
    text = ""
    media: list = []
    n_items = 0

    def append(piece: str):
        nonlocal text
        if not piece:
            return
        needs_sep = (
            text
            and separator
            and not text[-1].isspace()
            and not piece[0].isspace()
            and not text.endswith(media_token)
            and not piece.startswith((media_token, endofchunk_token))
        )
        text += (separator if needs_sep else "") + piece

    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"Message {k} must be a dict with a 'role' and a 'content'.")
        role = message["role"]
        content = message.get("content", "")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for item in content:
            if isinstance(item, str):
                item = {"type": "text", "text": item}
            kind = item.get("type")
            if kind == "text":
                append(item.get("text", ""))
            elif kind in ("image", "video"):
                n_items += 1
                obj = item.get(kind)
                if obj is None and kind == "image":
                    obj = item.get("path")
                if obj is not None:
                    media.append(_load_image(obj) if kind == "image" else obj)
                append(media_token)
            else:
                raise ValueError(f"Message {k}: unsupported content type {kind!r} (use 'text', 'image' or 'video').")
        if role == "assistant":
            text += endofchunk_token
        elif role not in ("user", "system"):
            raise ValueError(f"Message {k}: unsupported role {role!r} (use 'system', 'user' or 'assistant').")
    if media and len(media) != n_items:
        raise ValueError(
            f"{len(media)} of the {n_items} image/video items carry their object; give all of them or none."
        )
    return PromptWithMedia(text, media)


__all__ = ["PromptWithMedia", "caption_prompt", "messages_to_prompt", "vqa_prompt"]
