"""Processing for cosmo-vl models: the shipped tokenizer, :class:`CosmoProcessor` and prompt builders."""

from .processing_cosmo import IGNORE_INDEX, CosmoProcessor
from .prompts import PromptWithMedia, caption_prompt, messages_to_prompt, vqa_prompt
from .tokenization import (
    BOS_TOKEN,
    DEFAULT_TOKENIZER_DIR,
    ENDOFCHUNK_TOKEN,
    EOS_TOKEN,
    MEDIA_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKEN_IDS,
    UNK_TOKEN,
    default_image_processor,
    load_default_processor,
    load_default_tokenizer,
)

__all__ = [
    "BOS_TOKEN",
    "DEFAULT_TOKENIZER_DIR",
    "ENDOFCHUNK_TOKEN",
    "EOS_TOKEN",
    "IGNORE_INDEX",
    "MEDIA_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKEN_IDS",
    "UNK_TOKEN",
    "CosmoProcessor",
    "PromptWithMedia",
    "caption_prompt",
    "default_image_processor",
    "load_default_processor",
    "load_default_tokenizer",
    "messages_to_prompt",
    "vqa_prompt",
]
