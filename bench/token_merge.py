"""Token merging speed: a ViT-B/16-shaped vision tower and a whole SimVLG training step, with and without merging.

    python bench/token_merge.py --output token_merge.json [--batch 4] [--iters 3] [--device cpu]

- tower: forward + backward of a CLIP vision tower with ViT-B/16 shapes (197 tokens, 12 layers, width 768, random
  weights) with ToMe inside its layers (`apply_token_merging`) at r in {0, 8, 13, 16}; images/s and its speedup
  over r=0.
- simvlg_step: forward + backward + optimizer step (transformers' Trainer default, fused AdamW) of SimVLG (that
  tower frozen -> 12-layer BERT-base connector -> a small Llama) at connector merge_r in {0, 8, 14, 16} (14: 197 ->
  29 tokens, SimVLG's reduction), and with ToMe inside the frozen tower as well (`tower8_r6`: tower r=8, 197 ->
  101, connector r=6, -> 29; `tower13_r1`: tower r=13, 197 -> 41, connector r=1, -> 29; `tower14_r0`: tower r=14,
  197 -> 29, no connector merging); step time and speedup over no merging.
- simvlg_quality: `simvlg-tiny` trained from the same seed for `--quality_steps` steps on the embedded captions with
  merging (by default its connector's, `--quality_merge_r 3` per layer, 17 -> 11 tokens; `--quality_merge_r 0
  --quality_vision_merge_r 3` merges in its 2-layer tower instead, to the same 11 tokens) and without; held-out
  (`test_iid`) caption exact match / CIDEr of each, the point difference, and the measured step-time ratio.
Each point: one warm-up, then `--iters` timed iterations; `speedup` uses the fastest iteration (the least
disturbed), `speedup_mean` the mean; every time, the standard deviation and `noise` (std / mean) are kept, since
CPU timings on a small shared machine vary a lot.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig

from cosmo_vl.modeling import SimVlgConfig, SimVlgForConditionalGeneration, apply_token_merging
from cosmo_vl.modeling.token_merging import token_counts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import trainer_optimizer  # noqa: E402

TOWER_R = (0, 8, 13, 16)
# SimVLG points, key -> (vision-tower r, connector r) per layer. r14: 197 -> 29 tokens, SimVLG's 257 -> 29 in the
# connector; tower8_r6 / tower13_r1: ToMe inside the frozen tower too (197 -> 101 / 41), then the connector (-> 29);
# tower14_r0: all the merging in the tower (197 -> 29).
SIMVLG_POINTS = {"r0": (0, 0), "r8": (0, 8), "r14": (0, 14), "r16": (0, 16), "tower8_r6": (8, 6), "tower13_r1": (13, 1),
                 "tower14_r0": (14, 0)}


def vit_b16() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            patch_size=16, image_size=224)


def tower_flops(config: CLIPVisionConfig, r: int) -> float:
    """Matmul FLOPs of one image through the encoder layers when each merges r tokens between attention and MLP (as
    ToMe): projections and attention scores see the layer's input tokens, the MLP the merged ones. Their ratio at r vs
    0 is the speedup if time followed matmul FLOPs (the matching adds work; smaller activations stay in cache)."""
    d, m, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    after = token_counts(tokens, [r] * layers, 1)  # tokens leaving each layer's attention (and its MLP)
    before = [tokens] + after[:-1]
    return sum(2 * n * 4 * d * d + 4 * n * n * d + 2 * k * 2 * d * m for n, k in zip(before, after))


def _timed(step, iters: int, sync) -> list[float]:
    step()  # warm-up
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float], batch: int) -> dict:
    mean = statistics.mean(times)
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    best = min(times)  # the least disturbed run: the speedups use it, the mean and noise are kept beside it
    return {"seconds": times, "best_s": best, "mean_s": mean, "std_s": std, "noise": std / mean,
            "images_per_s": batch / best, "images_per_s_mean": batch / mean}


# ToMe's published off-the-shelf ViT-B/16 inference speedup at r=13 (the paper's throughput table), for comparison.
PUBLISHED_VIT_B16_R13 = 1.65


def bench_tower(batch: int, iters: int, device: torch.device, sync, dtype=torch.float32, inference: bool = False,
                compile_tower: bool = False) -> dict:
    """Images/s of the ViT-B/16 tower at each r: forward + backward (training), or forward alone under
    `torch.inference_mode` (`inference=True`, ToMe's throughput setting)."""
    torch.manual_seed(0)
    model = CLIPVisionModel._from_config(vit_b16(), attn_implementation="sdpa").to(device, dtype)
    model.train(not inference)
    apply_token_merging(model, r=0)
    run = torch.compile(model) if compile_tower else model  # recompiles once per r (tome_r is guarded)
    pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    results = {}
    for r in TOWER_R:
        model.tome_r = r

        def step():
            if inference:
                with torch.inference_mode():
                    run(pixel_values=pixels)
                return
            model.zero_grad(set_to_none=True)
            run(pixel_values=pixels).last_hidden_state.float().square().mean().backward()

        if compile_tower:
            step()  # compilation outside the timed warm-up
        results[f"r{r}"] = {**_summary(_timed(step, iters, sync), batch), "r": r,
                            "tokens_out": token_counts(197, [r] * 12, 1)[-1],
                            "flop_ratio": tower_flops(vit_b16(), 0) / tower_flops(vit_b16(), r)}
        print(f"tower r={r:2d} ({'inference' if inference else 'fwd+bwd'}, {dtype}): "
              f"{results[f'r{r}']['images_per_s']:.1f} images/s", flush=True)
    base, base_mean = results["r0"]["images_per_s"], results["r0"]["images_per_s_mean"]
    for point in results.values():
        point["speedup"] = point["images_per_s"] / base
        point["speedup_mean"] = point["images_per_s_mean"] / base_mean
        point["speedup_over_flop_ratio"] = point["speedup"] / point["flop_ratio"]
    return results


def simvlg_config(merge_r: int, vision_merge_r: int = 0) -> SimVlgConfig:
    text = LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=4, vocab_size=8000, max_position_embeddings=512)
    return SimVlgConfig(vision_config=vit_b16(), text_config=text, merge_r=merge_r, vision_merge_r=vision_merge_r,
                        media_token_id=3, connector_dropout=0.0)


def bench_simvlg(batch: int, iters: int, device: torch.device, sync, dtype=torch.float32) -> dict:
    results = {}
    ids = torch.randint(5, 8000, (batch, 32), device=device)
    ids[:, 1] = 3
    labels = ids.clone()
    labels[:, :2] = -100
    pixels = torch.randn(batch, 1, 1, 3, 224, 224, device=device, dtype=dtype)
    for key, (vision_r, r) in SIMVLG_POINTS.items():
        torch.manual_seed(0)
        model = SimVlgForConditionalGeneration(simvlg_config(r, vision_r)).to(device, dtype).train()
        optimizer = trainer_optimizer(model)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(input_ids=ids, pixel_values=pixels, labels=labels).loss.backward()
            optimizer.step()

        summary = _summary(_timed(step, iters, sync), batch)
        tower_out = token_counts(197, [vision_r] * 12, 1)[-1]
        results[key] = {**summary, "merge_r": r, "vision_merge_r": vision_r, "tower_tokens": tower_out,
                        "visual_tokens": token_counts(tower_out, [r] * 12, 1)[-1], "step_s": summary["best_s"]}
        print(f"simvlg {key}: {summary['best_s']:.2f} s/step, {results[key]['visual_tokens']} visual tokens", flush=True)
        del model, optimizer
    base, base_mean = results["r0"]["best_s"], results["r0"]["mean_s"]
    for point in results.values():
        point["speedup"] = base / point["best_s"]
        point["speedup_mean"] = base_mean / point["mean_s"]
    return results


def bench_simvlg_quality(steps: int, batch: int, eval_samples: int, merge_r: int = 3,
                         vision_merge_r: int = 0, seed: int = 0) -> dict:
    """Caption quality of simvlg-tiny with and without merging (r per connector layer, `vision_merge_r` per tower
    layer) after the same steps and data order. Keys: `r0` and `r{merge_r}` (`tower{vision_merge_r}_r{merge_r}` when
    the tower merges)."""
    from cosmo_vl import evaluation
    from cosmo_vl.presets import get_config, get_processor
    from cosmo_vl.processing import VLCollator, load_any

    data = load_any("shapes-captions")
    held_out = data["test_iid"].select(range(min(eval_samples, len(data["test_iid"]))))
    processor = get_processor("simvlg-tiny")
    collator = VLCollator(processor, max_length=64, truncation=True)
    merged_key = f"tower{vision_merge_r}_r{merge_r}" if vision_merge_r else f"r{merge_r}"
    results = {}
    for key, (tower_r, r) in {"r0": (0, 0), merged_key: (vision_merge_r, merge_r)}.items():
        torch.manual_seed(seed)
        config = get_config("simvlg-tiny", merge_r=r, vision_merge_r=tower_r)
        model = SimVlgForConditionalGeneration(config).train()
        optimizer = trainer_optimizer(model, lr=1e-3)
        order = torch.randperm(len(data["train"]), generator=torch.Generator().manual_seed(seed)).tolist()
        start, losses = time.perf_counter(), []
        for step in range(steps):
            rows = [data["train"][order[(step * batch + k) % len(order)]] for k in range(batch)]  # wraps epochs
            loss = model(**collator(rows)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        train_s = time.perf_counter() - start
        model.eval()
        scores = evaluation.captioning(model, processor, held_out["image"], [[c] for c in held_out["text"]],
                                       progress=False)
        results[key] = {"merge_r": r, "vision_merge_r": tower_r, "train_s": train_s, "s_per_step": train_s / max(steps, 1),
                            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
                            "exact_match": scores["exact_match"], "cider": scores["cider"], "bleu4": scores["bleu4"]}
        print(f"simvlg quality {key}: exact match {scores['exact_match']:.3f}, CIDEr {scores['cider']:.2f}, "
              f"{train_s / max(steps, 1):.3f} s/step", flush=True)
    base, merged = results["r0"], results[merged_key]
    results["exact_match_points_lost"] = 100 * (base["exact_match"] - merged["exact_match"])
    results["step_speedup"] = base["s_per_step"] / merged["s_per_step"]
    results["settings"] = {"steps": steps, "batch": batch, "eval_samples": len(held_out), "split": "test_iid",
                           "seed": seed}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="tower and SimVLG step dtype")
    parser.add_argument("--tower_batch", type=int, default=None, help="tower batch (default: --batch)")
    parser.add_argument("--compile", action="store_true", help="also time the tower under torch.compile")
    parser.add_argument("--skip_simvlg", action="store_true", help="tower only")
    parser.add_argument("--quality_steps", type=int, default=600, help="0 skips the quality comparison")
    parser.add_argument("--quality_eval_samples", type=int, default=200)
    parser.add_argument("--quality_merge_r", type=int, default=3, help="merged setting: r per connector layer")
    parser.add_argument("--quality_vision_merge_r", type=int, default=0, help="merged setting: r per tower layer")
    parser.add_argument("--quality_seed", type=int, default=0, help="initial weights and batch order of both settings")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = getattr(torch, args.dtype)
    tower_batch = args.tower_batch or args.batch
    machine = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "platform": platform.platform()}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    report = {
        "benchmark": "token_merge",
        "machine": machine,
        "settings": {"batch": args.batch, "tower_batch": tower_batch, "iters": args.iters, "dtype": args.dtype,
                     "tower": "CLIP ViT-B/16 shapes, 197 tokens, SDPA attention"},
        "tower": bench_tower(tower_batch, args.iters, device, sync, dtype),
        "tower_inference": bench_tower(tower_batch, args.iters, device, sync, dtype, inference=True),
        "published_tome_vit_b16_r13_speedup": PUBLISHED_VIT_B16_R13,
    }
    if args.compile:
        report["tower_compiled"] = bench_tower(tower_batch, args.iters, device, sync, dtype, compile_tower=True)
        report["tower_inference_compiled"] = bench_tower(tower_batch, args.iters, device, sync, dtype, inference=True,
                                                         compile_tower=True)
    if not args.skip_simvlg:
        report["simvlg_step"] = bench_simvlg(args.batch, args.iters, device, sync, dtype)
    if args.quality_steps > 0:
        report["simvlg_quality"] = bench_simvlg_quality(args.quality_steps, 32, args.quality_eval_samples,
                                                        args.quality_merge_r, args.quality_vision_merge_r,
                                                        args.quality_seed)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    timed = [k for k in ("tower", "tower_inference", "tower_compiled", "tower_inference_compiled", "simvlg_step")
             if k in report]
    print(json.dumps({k: {p: round(v["speedup"], 2) for p, v in report[k].items()} for k in timed}))


if __name__ == "__main__":
    main()
