"""CosMo generation tokens/s beside the bare LM it wraps, on a CPU or a GPU (no OpenFlamingo needed).

    python bench/generation.py --output generation.json --quick                          # CPU: cosmo-tiny
    python bench/generation.py --output generation_2b.json --device cuda --config 2b     # GPU: cosmo-2b in bf16

Greedy, exactly 32 new tokens, few-shot prompts with 1 and 4 images, batch 1 and 8 (the prompt repeated, each row
with its own images). The bare LM (the same decoder and weights, same dtype, default cache) generates the same
number of tokens from the same prompt ids without images: its tokens/s is the ceiling of any model running this LM.
`media_encoding` times CosMo's vision tower + resampler on the prompt's images alone. See `_generation.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _generation import generation_benchmark  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", choices=["tiny", "2b"], help="preset (default: 2b on CUDA, tiny on CPU)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed calls")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--images", default="1,4", help="comma-separated images per prompt")
    args = parser.parse_args(argv)
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        result = {"benchmark": "generation", "skipped": "CUDA requested but torch.cuda.is_available() is False",
                  "machine": info}
        args.output.write_text(json.dumps(result, indent=2))
        print(result["skipped"])
        return 0
    cuda = args.device == "cuda"
    if cuda:
        info["gpu"] = torch.cuda.get_device_name()
    preset = args.config or ("2b" if cuda else "tiny")
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    iters = args.iters if args.iters is not None else (2 if args.quick else 5)
    start = time.perf_counter()
    out = generation_benchmark(preset, torch.device(args.device), dtype,
                               batches=[int(b) for b in args.batches.split(",")],
                               images=[int(n) for n in args.images.split(",")], new_tokens=args.new_tokens,
                               warmup=warmup, iters=iters, log=lambda line: print(line, flush=True))
    result = {"benchmark": "generation", **out, "wall_time_s": time.perf_counter() - start, "machine": info,
              "notes": ["tokens/s = batch x new tokens / median time of the whole generate call (media encoding "
                        "included for CosMo); cosmo_over_lm_tokens_per_s = CosMo's tokens/s / the bare LM's."]}
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["cosmo_over_lm_tokens_per_s"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
