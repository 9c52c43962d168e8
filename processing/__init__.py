"""Processing for cosmo-vl models: the shipped tokenizer, :class:`CosmoProcessor` and prompt builders."""

from .captions import CaptionChoice, caption_references, one_caption_per_sample, retrieval_targets
from .collators import SampleError, SkipStats, VLCollator
from .images import ImageLoadingError, load_image
from .layouts import LayoutError
from .loaders import detect_format, load_any, load_image_text, load_interleaved, load_interleaved_video, load_video_text
from .media import load_media
from .mixing import RoundRobinBatches
from .processing_cosmo import IGNORE_INDEX, CosmoProcessor, CosmoProcessorKwargs, default_chat_template
from .synthetic import (
    EMBEDDED_DATASETS,
    flatten_interleaved,
    held_out_combinations,
    interleaved_to_text,
    load_embedded_dataset,
    zero_shot_classes,
    zero_shot_prompts,
)
from .video import (
    SkipCounter,
    VideoDecodingError,
    read_video,
    read_video_or_none,
    resize_frames,
    sample_indices,
    write_video,
)
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
    "CaptionChoice",
    "LayoutError",
    "caption_references",
    "load_media",
    "one_caption_per_sample",
    "retrieval_targets",
    "EMBEDDED_DATASETS",
    "ImageLoadingError",
    "RoundRobinBatches",
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
    "flatten_interleaved",
    "held_out_combinations",
    "interleaved_to_text",
    "load_interleaved",
    "load_interleaved_video",
    "resize_frames",
    "write_video",
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
    "CosmoProcessorKwargs",
    "PromptWithMedia",
    "caption_prompt",
    "default_chat_template",
    "default_image_processor",
    "load_default_processor",
    "load_default_tokenizer",
    "messages_to_prompt",
    "vqa_prompt",
]
