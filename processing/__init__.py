"""Processing for cosmo-vl models: the shipped tokenizer, :class:`CosmoProcessor` and prompt builders."""

from .collators import SampleError, SkipStats, VLCollator, obelics_to_text
from .embedded import EMBEDDED_DATASETS, load_embedded_dataset, zero_shot_classes, zero_shot_prompts
from .images import ImageLoadingError, load_image
from .loaders import detect_format, load_any, load_image_text, load_video_text
from .processing_cosmo import IGNORE_INDEX, CosmoProcessor
from .video import SkipCounter, VideoDecodingError, read_video, read_video_or_none, sample_indices
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
    "EMBEDDED_DATASETS",
    "ImageLoadingError",
    "SampleError",
    "SkipCounter",
    "SkipStats",
    "VLCollator",
    "VideoDecodingError",
    "detect_format",
    "load_any",
    "load_embedded_dataset",
    "load_image",
    "load_image_text",
    "load_video_text",
    "obelics_to_text",
    "read_video",
    "read_video_or_none",
    "sample_indices",
    "zero_shot_classes",
    "zero_shot_prompts",
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
