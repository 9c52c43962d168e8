"""Achieved FLOP/s of a CosMo training step against the machine's measured matmul peak (the CPU analogue of MFU).

    python bench/roofline.py --output roofline.json                       # CPU: cosmo-tiny and a mid-size config
    python bench/roofline.py --output roofline_2b.json --device cuda --config 2b   # GPU only: bf16, cosmo-2b shapes
    python bench/roofline.py --output roofline_2b.json --device cuda --config 2b --trainer --levers --time_split
    python bench/roofline.py --output memory_2b.json --device cuda --config 2b --memory_only --max_search_s 60

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on a real training step (forward + backward of the
model's loss on a batch of image-caption pairs; the AdamW update is not counted, it is O(parameters)). Achieved
FLOP/s = counted FLOPs / median measured step time (forward + backward + AdamW step). The peak is measured here,
not taken from a data sheet: the best FLOP/s of a large square matmul (fp32 on CPU, bf16 on CUDA). The fraction
achieved / peak is what the training step gets out of the machine; matmul-bound parts of a transformer can reach it,
attention softmax, norms, elementwise ops and small shapes cannot. The CUDA path builds `cosmo-2b` (OPT-1.3B +
ViT-L/14 shapes, random weights, towers frozen as released) and runs only where CUDA is present; on CUDA the
default shapes are 8 x 512 and 16 x 1024 tokens.

Two paths, each row one (shape, variant) (see `_step_timing` for the switches):
- bare loop: forward + backward + AdamW step + zero_grad on the model (bf16 weights as first measured, or fp32
  master weights under bf16 autocast);
- `--trainer`: the real `CosmoTrainer` (`CosmoTrainingArguments(bf16=True)`: accelerate mixed precision, fp32
  master weights + autocast) on an in-memory dataset of pre-tokenized pairs with a stacking collator, each
  optimizer step timed by a callback (device synchronised at `on_step_begin` / `on_step_end`), warm-up steps
  excluded, FLOPs counted on one extra step of that same Trainer.
`--levers` adds fused AdamW, TF32 and the flash SDPA backend side by side. `--time_split` times the LM head + loss,
the optimizer step (and gradient clipping) and the LM's attention alone at the step's shapes (CUDA events), as
shares of the Trainer step. `--memory` searches the largest Trainer batch at 1024 tokens without and with gradient
checkpointing (doubling, then bisection; `--max_search_s` each), with its peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _roofline_plan import (  # noqa: E402
    Models, default_shapes, measure_config, memory, parse_shapes, plan_variants,
)
from _step_timing import PRECISIONS, config_for, matmul_peak  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", action="append", choices=["tiny", "mid", "2b"],
                        help="configs to measure (repeatable); default: tiny and mid on CPU, 2b on CUDA")
    parser.add_argument("--shapes", help="BATCHxTOKENS list, e.g. 8x512,16x1024 (default: per config and device)")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--warmup", type=int, help="untimed steps per measurement (default 3; 1 with --quick)")
    parser.add_argument("--iters", type=int, help="timed steps per measurement (default 5 on CUDA, 7 on CPU; 2 quick)")
    parser.add_argument("--trainer", action="store_true", help="also time the real CosmoTrainer path")
    parser.add_argument("--levers", action="store_true", help="also time fused AdamW, TF32, flash SDPA, autocast")
    parser.add_argument("--time_split", action="store_true",
                        help="time the LM head + loss, optimizer step and attention alone (needs --trainer)")
    parser.add_argument("--memory", action="store_true",
                        help="largest Trainer batch at --memory_seq_len tokens without / with gradient checkpointing")
    parser.add_argument("--memory_only", action="store_true", help="only the --memory search (no step timings)")
    parser.add_argument("--memory_seq_len", type=int, default=1024)
    parser.add_argument("--memory_start", type=int, help="first batch tried (default 8 on CUDA, 1 on CPU)")
    parser.add_argument("--memory_max_batch", type=int, help="stop doubling here (default: none on CUDA, 4 on CPU)")
    parser.add_argument("--max_search_s", type=float, default=60.0,
                        help="no new try starts after this many seconds of one search (each of the two)")
    parser.add_argument("--memory_precision", default="autocast",
                        choices=[p for p in PRECISIONS if p != "bf16_weights"],
                        help="Trainer precision of the memory search (default autocast = bf16=True)")
    args = parser.parse_args(argv)
    if args.time_split and not args.trainer:
        parser.error("--time_split times the Trainer's own optimizer: add --trainer.")
    args.memory = args.memory or args.memory_only
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import platform

    import transformers

    start = time.perf_counter()
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads(), "platform": platform.platform()}
    if args.device == "cuda" and not torch.cuda.is_available():
        result = {"benchmark": "roofline", "skipped": "CUDA requested but torch.cuda.is_available() is False",
                  "machine": info}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
        print(result["skipped"])
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        dtype, configs = torch.bfloat16, args.config or ["2b"]
        peak = matmul_peak(device, dtype, 8192, 20)
        info["gpu"] = torch.cuda.get_device_name()
    else:
        dtype, configs = torch.float32, args.config or ["tiny", "mid"]
        peak = matmul_peak(device, dtype, 2048, 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    iters = args.iters if args.iters is not None else (2 if args.quick else (5 if cuda else 7))
    bare, steps = plan_variants(device, args.trainer, args.levers)
    print(f"[roofline] peak {dtype} matmul: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (n={peak['n']})", flush=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    rows, results, memory_results = [], {}, {}
    for name in configs:
        models = Models(config_for(name)[0], device)
        if not args.memory_only:
            shapes = parse_shapes(args.shapes) if args.shapes else default_shapes(name, device)
            out = measure_config(name, device, shapes, peak["flops_per_s"], bare, steps, warmup, iters,
                                 split=args.time_split, models=models, log=log)
            out.pop("models")
            results[name] = out
            reference = out["rows"][0]["variant"]
            rows += [{**out["info"], **r} for r in out["rows"] if r["path"] == "bare" and r["variant"] == reference]
        if args.memory:
            variant = {"precision": args.memory_precision if cuda else "fp32", "optim": "adamw_torch_fused"}
            memory_results[name] = memory(
                name, device, args.memory_seq_len, variant, args.memory_start or (8 if cuda else 1),
                args.max_search_s, args.memory_max_batch or (None if cuda else 4), models=models, log=log)
        del models
    result = {
        "benchmark": "roofline",
        "device": device.type,
        "peak_matmul": peak,
        "configs": rows,
        "fraction_of_peak": {f"{r['config']}/{r['batch']}x{r['seq_len']}": r["fraction_of_peak"] for r in rows},
        "targets": {name: out["summary"] for name, out in results.items()},
        "runs": {name: out["rows"] for name, out in results.items()},
        "flops_by_top_module": {name: out["flops_by_top_module"] for name, out in results.items()},
        "time_split": {name: out["time_split"] for name, out in results.items() if out["time_split"]},
        "memory": memory_results,
        "settings": {"warmup": warmup, "iters": iters, "trainer": args.trainer, "levers": args.levers,
                     "time_split": args.time_split, "memory_seq_len": args.memory_seq_len,
                     "max_search_s": args.max_search_s},
        "wall_time_s": time.perf_counter() - start,
        "machine": info,
        "notes": [
            "FLOPs from FlopCounterMode on one real forward+backward (matmuls, convolutions and SDPA; elementwise "
            "ops count zero; on a CPU its SDPA kernel has no FLOP formula and counts zero); AdamW update not "
            "counted. Step time includes the optimizer step (and, on the Trainer path, gradient clipping).",
            "Peak = best time of a large square matmul in the same dtype, measured on this machine.",
            "configs = the reference bare-loop row of each shape; runs = every (shape, path, variant) row; targets "
            "= per shape the reference and best fraction of each path against the target fraction.",
            "flops_by_top_module counts the forward only (FlopCounterMode attributes backward FLOPs to modules "
            "unreliably); each row's flops.attention_kernels lists the attention kernels that ran.",
            "Absolute CPU times are noisy (small shared CPU).",
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps({"fraction_of_peak": result["fraction_of_peak"], "targets": result["targets"]}, indent=2))
    print(f"[roofline] {result['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
