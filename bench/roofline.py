"""Achieved FLOP/s of a CosMo training step against the machine's measured matmul peak (the CPU analogue of MFU).

    python bench/roofline.py --output roofline.json                       # CPU: cosmo-tiny and a mid-size config
    python bench/roofline.py --output roofline_2b.json --device cuda --config 2b   # GPU only: bf16, cosmo-2b shapes

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on a real training step (forward + backward of the
model's loss on a batch of image-caption pairs; the AdamW update is not counted, it is O(parameters)). Achieved
FLOP/s = counted FLOPs / median measured step time (forward + backward + AdamW step). The peak is measured here,
not taken from a data sheet: the best FLOP/s of a large square matmul (fp32 on CPU, bf16 on CUDA). The fraction
achieved / peak is what the training step gets out of the machine; matmul-bound parts of a transformer can reach it,
attention softmax, norms, elementwise ops and small shapes cannot. The CUDA path builds `cosmo-2b` (OPT-1.3B +
ViT-L/14 shapes, random weights, towers frozen as released) in bf16 and runs only where CUDA is present.
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


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n: int, reps: int) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {"n": n, "dtype": str(dtype), "best_time_s": best, "flops_per_s": 2 * n**3 / best}


def mid_config():
    """A mid-size CosMo: ViT-B/32-like tower (width 512, 8 layers) and a 12-layer Llama-style LM of width 1024."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from cosmo_vl.modeling import CosmoConfig
    from cosmo_vl.presets import get_config

    tiny = get_config("cosmo-tiny")  # for the special token ids of the embedded tokenizer
    text = LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=16,
        vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                              patch_size=32, image_size=224)
    return CosmoConfig(
        vision_config=vision, text_config=text, unimodal_depth=6, cross_attention_interval=1,
        media_token_id=tiny.media_token_id, endofchunk_token_id=tiny.endofchunk_token_id,
    )


def config_for(name: str):
    from cosmo_vl.presets import get_config

    if name == "tiny":
        return get_config("cosmo-tiny"), 32
    if name == "mid":
        return mid_config(), 224
    if name == "2b":
        return get_config("cosmo-2b"), 224
    raise KeyError(name)


def make_batch(config, batch: int, seq_len: int, image: int, device, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size
    ids = torch.randint(10, vocab, (batch, seq_len), generator=g)
    ids[ids == config.media_token_id] = 10
    ids[ids == config.endofchunk_token_id] = 10
    ids[:, 1] = config.media_token_id  # one image per sample, right after the first token: a pair batch
    ids[:, -1] = config.endofchunk_token_id
    labels = ids.clone()
    labels[:, :2] = -100
    pixels = torch.randn(batch, 1, 1, 3, image, image, generator=g)
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixels.to(device, dtype)}


def measure(name: str, device, dtype, batch: int, seq_len: int, warmup: int, iters: int, peak: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from cosmo_vl.modeling import CosmoForConditionalGeneration, trainable_parameters

    config, image = config_for(name)
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(config).to(device, dtype)
    model.train()
    trainable, total, _ = trainable_parameters(model)
    data = make_batch(config, batch, seq_len, image, device, dtype)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(warmup + iters):
        sync(device)
        start = time.perf_counter()
        loss = model(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        model(**data).loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    by_module = {str(k): v for k, v in counter.get_flop_counts().items() if "." not in str(k) and k != "Global"}
    step = median(times)
    achieved = flops / step
    return {
        "config": name,
        "device": device.type,
        "dtype": str(dtype),
        "batch": batch,
        "seq_len": seq_len,
        "image_size": image,
        "text": {"model_type": config.text_config.model_type, "hidden": config.text_config.hidden_size,
                 "layers": config.text_config.num_hidden_layers, "vocab": config.text_config.vocab_size},
        "vision": {"hidden": config.vision_config.hidden_size, "layers": config.vision_config.num_hidden_layers,
                   "patch": config.vision_config.patch_size},
        "unimodal_depth": config.unimodal_depth,
        "params": {"trainable": trainable, "total": total},
        "train_step_flops": flops,
        "flops_by_top_module": {k: sum(v.values()) for k, v in by_module.items()},
        "step_time_s": step,
        "step_times_s": times,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak,
        "fraction_of_peak": achieved / peak,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", action="append", choices=["tiny", "mid", "2b"],
                        help="configs to measure (repeatable); default: tiny and mid on CPU, 2b on CUDA")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    args = parser.parse_args(argv)
    import platform

    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads(), "platform": platform.platform()}
    if args.device == "cuda" and not torch.cuda.is_available():
        result = {"benchmark": "roofline", "skipped": "CUDA requested but torch.cuda.is_available() is False",
                  "machine": info}
        args.output.write_text(json.dumps(result, indent=2))
        print(result["skipped"])
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        dtype, configs = torch.bfloat16, args.config or ["2b"]
        peak = matmul_peak(device, dtype, 8192, 20)
        info["gpu"] = torch.cuda.get_device_name()
        shapes = {"2b": (8, 512), "mid": (8, 512), "tiny": (32, 128)}
    else:
        dtype, configs = torch.float32, args.config or ["tiny", "mid"]
        peak = matmul_peak(device, dtype, 2048, 10)
        shapes = {"tiny": (8, 128), "mid": (2, 128), "2b": (1, 64)}
    warmup, iters = (2, 3) if args.quick else (3, 7)
    print(f"[roofline] peak {dtype} matmul: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (n={peak['n']})", flush=True)
    rows = []
    for name in configs:
        batch, seq = shapes[name]
        row = measure(name, device, dtype, batch, seq, warmup, iters, peak["flops_per_s"])
        rows.append(row)
        print(f"[roofline] {name}: {row['train_step_flops'] / 1e9:.2f} GFLOP/step, {row['step_time_s']:.3f} s/step, "
              f"{row['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * row['fraction_of_peak']:.1f}% of peak", flush=True)
    result = {
        "benchmark": "roofline",
        "device": device.type,
        "peak_matmul": peak,
        "configs": rows,
        "fraction_of_peak": {r["config"]: r["fraction_of_peak"] for r in rows},
        "machine": info,
        "notes": [
            "FLOPs from FlopCounterMode on one real forward+backward (matmuls, convolutions and SDPA; elementwise "
            "ops count zero); AdamW update not counted. Step time includes the AdamW step.",
            "Peak = best time of a large square matmul in the same dtype, measured on this machine.",
            "Absolute CPU times are noisy (small shared CPU).",
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["fraction_of_peak"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
