"""Convert an OpenFlamingo or CosMo reference checkpoint into a cosmo-vl model folder.

    python examples/convert_checkpoint.py --checkpoint checkpoint.pt \\
        --vision_model openai/clip-vit-large-patch14 --text_model <causal LM id or folder> --output out/ \\
        [--layout openflamingo|cosmo] [--tokenizer ID] [--dtype bfloat16]

`--vision_model` / `--text_model` give the towers' configs, and their weights where the checkpoint does not hold them
(the released checkpoints hold only the trained parameters). The folder gets `save_pretrained` of
`CosmoForConditionalGeneration` (config + weights) and of a `CosmoProcessor` (tokenizer with the source's special
tokens, the vision tower's image processor). Load it with `AutoModelForImageTextToText.from_pretrained(out)`.
The mapping (and what cannot be mapped) is described in `cosmo_vl/modeling/convert_openflamingo.py`.
"""

from __future__ import annotations

import argparse
import sys

import torch

import cosmo_vl  # noqa: F401 - registers the Auto classes
from cosmo_vl.modeling import convert_openflamingo as conv
from cosmo_vl.processing.processing_cosmo import CosmoProcessor
from cosmo_vl.processing.tokenization import default_image_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="state dict: .pt / .bin (torch.save) or .safetensors")
    p.add_argument("--vision_model", required=True, help="CLIP vision tower (Hub id or folder) the checkpoint used")
    p.add_argument("--text_model", required=True, help="causal LM (Hub id or folder) the checkpoint used")
    p.add_argument("--output", required=True, help="folder to write the cosmo-vl model and processor to")
    p.add_argument("--layout", choices=conv.LAYOUTS, default=None, help="source layout (default: detected)")
    p.add_argument("--tokenizer", default=None, help="tokenizer the checkpoint was trained with (default: --text_model)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="save in this dtype (default: as loaded)")
    p.add_argument("--cross_attention_heads", type=int, default=8, help="heads of the source cross-attention (8)")
    p.add_argument("--source_cross_attention_head_dim", type=int, default=64,
                   help="dim_head the source scaled cross-attention scores with (64)")
    p.add_argument("--resampler_heads", type=int, default=8, help="heads of the source resampler (8)")
    return p.parse_args(argv)


def image_processor_for(vision_model: str):
    """The vision tower's image processor, or a CLIP-style one at the tower's image size when it ships none."""
    from transformers import AutoConfig, AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(vision_model)
    except (OSError, ValueError):
        config = AutoConfig.from_pretrained(vision_model)
        return default_image_processor(getattr(getattr(config, "vision_config", None) or config, "image_size", 224))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        model, tokenizer, mapped = conv.convert(
            args.checkpoint, args.vision_model, args.text_model, layout=args.layout, tokenizer=args.tokenizer,
            dtype=DTYPES.get(args.dtype), cross_attention_heads=args.cross_attention_heads,
            source_cross_attention_head_dim=args.source_cross_attention_head_dim, resampler_heads=args.resampler_heads,
        )
    except conv.UnmappedKeysError as err:
        print(f"conversion failed: {err}", file=sys.stderr)
        return 2
    processor = CosmoProcessor(image_processor_for(args.vision_model), tokenizer,
                               media_token=conv.media_token(mapped), endofchunk_token="<|endofchunk|>")
    model.save_pretrained(args.output)
    processor.save_pretrained(args.output)
    print(conv.summary(mapped))
    print(f"saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
