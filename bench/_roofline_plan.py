"""What `bench/roofline.py` measures for one config: the bare loop and the Trainer path at each shape under each
variant of speed switches (rows: FLOPs / median step time / peak), the time split of the Trainer step, and the
largest batch that fits with and without gradient checkpointing."""

from __future__ import annotations

import copy
import time

import torch

from _step_timing import (
    add_fractions, attention_implementations, bare_steps, build_model, config_for, make_batch, step_flops,
    variant_name,
)
from _time_split import time_split
from _trainer_path import trainer_memory_search, trainer_steps

TARGETS = {(16, 1024): 0.5, (8, 512): 0.4}  # (batch, tokens) -> fraction of the measured matmul peak to reach


def default_shapes(name: str, device) -> list[tuple[int, int]]:
    if torch.device(device).type == "cuda":
        return [(8, 512), (16, 1024)] if name in ("2b", "mid") else [(32, 128)]
    return {"tiny": [(8, 128)], "mid": [(2, 128)], "2b": [(1, 64)]}[name]


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"8x512,16x1024" -> [(8, 512), (16, 1024)]."""
    try:
        return [tuple(int(n) for n in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        raise ValueError(f"--shapes {text!r}: give BATCHxTOKENS pairs separated by commas, e.g. 8x512,16x1024.")


def plan_variants(device, trainer: bool, levers: bool) -> tuple[list[dict], list[dict]]:
    """(bare loop variants, Trainer variants). The first of each is the reference: the bare loop as first measured
    (bf16 weights, torch AdamW; fp32 on a CPU) and the Trainer as configured by default (bf16=True, fused AdamW
    from torch 2.8 on). `levers` adds the speed switches one at a time, then together."""
    if torch.device(device).type == "cuda":
        bare = [{"precision": "bf16_weights", "optim": "adamw_torch"}]
        bare += [{"precision": "bf16_weights", "optim": "adamw_torch_fused"},
                 {"precision": "autocast", "optim": "adamw_torch"},
                 {"precision": "autocast", "optim": "adamw_torch_fused"}] if levers else []
        steps = [{"precision": "autocast", "optim": "adamw_torch_fused"}]
        fused = {"precision": "autocast", "optim": "adamw_torch_fused"}
        steps += [{"precision": "autocast", "optim": "adamw_torch"}, {**fused, "tf32": True},
                  {**fused, "sdpa": "flash"}, {**fused, "tf32": True, "sdpa": "flash"}] if levers else []
    else:
        bare = [{"precision": "fp32", "optim": "adamw_torch"}]
        bare += [{"precision": "fp32", "optim": "adamw_torch_fused"}] if levers else []
        steps = [{"precision": "fp32", "optim": "adamw_torch_fused"}]
        steps += [{"precision": "fp32", "optim": "adamw_torch"}] if levers else []
    return bare, steps if trainer else []


def describe(name: str, config, image: int, model) -> dict:
    from cosmo_vl.modeling import trainable_parameters

    trainable, total, _ = trainable_parameters(model)
    return {
        "config": name, "image_size": image,
        "text": {"model_type": config.text_config.model_type, "hidden": config.text_config.hidden_size,
                 "layers": config.text_config.num_hidden_layers, "vocab": config.text_config.vocab_size},
        "vision": {"hidden": config.vision_config.hidden_size, "layers": config.vision_config.num_hidden_layers,
                   "patch": config.vision_config.patch_size},
        "unimodal_depth": config.unimodal_depth, "params": {"trainable": trainable, "total": total},
        "attn_implementation": attention_implementations(model),
    }


class Models:
    """The config's model in fp32 (master weights: autocast, fp32, the Trainer) and in bf16 (bf16_weights), each
    built on first use; the bf16 one is a cast copy of the fp32 one when that exists."""

    def __init__(self, config, device):
        self.config, self.device, self.built = config, torch.device(device), {}

    def get(self, precision: str):
        dtype = torch.bfloat16 if precision == "bf16_weights" else torch.float32
        if dtype not in self.built:
            fp32 = self.built.get(torch.float32)
            self.built[dtype] = (copy.deepcopy(fp32).to(dtype) if fp32 is not None
                                 else build_model(self.config, self.device, dtype))
        return self.built[dtype]

    def drop(self, precision: str) -> None:
        self.built.pop(torch.bfloat16 if precision == "bf16_weights" else torch.float32, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def summarise_shape(batch: int, seq_len: int, rows: list[dict]) -> dict:
    target = TARGETS.get((batch, seq_len))
    out = {"shape": f"{batch}x{seq_len}", "target_fraction": target}
    for path in ("bare", "trainer"):
        fractions = {r["variant"]: r["fraction_of_peak"] for r in rows if r["path"] == path}
        if not fractions:
            continue
        best = max(fractions, key=fractions.get)
        out[path] = {"fraction_by_variant": fractions, "reference_variant": next(iter(fractions)),
                     "reference_fraction": next(iter(fractions.values())), "best_variant": best,
                     "best_fraction": fractions[best],
                     "met": None if target is None else fractions[best] >= target}
    return out


def measure_config(name: str, device, shapes, peak: float, bare_variants: list[dict], trainer_variants: list[dict],
                   warmup: int, iters: int, split: bool = False, models: Models | None = None, log=print) -> dict:
    """Every (shape, variant) row of one config, the per-shape summary and (with `split`) the time split of the
    reference Trainer step."""
    device = torch.device(device)
    config, image = config_for(name)
    models = models or Models(config, device)
    rows, summaries, splits, info = [], [], {}, None
    for batch, seq_len in shapes:
        shape_rows = []
        first = (bare_variants or trainer_variants)[0]
        model = models.get(first["precision"])
        info = info or describe(name, config, image, model)
        data_dtype = torch.bfloat16 if first["precision"] == "bf16_weights" else torch.float32
        flops = step_flops(model, make_batch(config, batch, seq_len, image, device, data_dtype), device,
                           first["precision"])
        for variant in bare_variants:
            model = models.get(variant["precision"])
            dtype = torch.bfloat16 if variant["precision"] == "bf16_weights" else torch.float32
            start = time.perf_counter()
            row = bare_steps(model, make_batch(config, batch, seq_len, image, device, dtype), device, variant,
                             warmup, iters)
            row["wall_s"] = time.perf_counter() - start
            shape_rows.append(row)
        for i, variant in enumerate(trainer_variants):
            model = models.get(variant["precision"])

            def after(trainer, result, variant=variant, model=model):
                if not (split and i == 0):
                    return {}
                return {"time_split": time_split(model, batch, seq_len, device, variant["precision"],
                                                 variant.get("sdpa", "default"), trainer.optimizer.optimizer,
                                                 result["step_time_s"], warmup, iters)}

            start = time.perf_counter()
            row = trainer_steps(model, make_batch(config, batch, seq_len, image), device, variant, warmup, iters,
                                after=after)
            row["wall_s"] = time.perf_counter() - start
            row["flops_equal_to_bare"] = row.get("train_step_flops") == flops["total"]
            if "time_split" in row:
                splits[f"{batch}x{seq_len}"] = row.pop("time_split")
            shape_rows.append(row)
        for row in shape_rows:
            row.update({"config": name, "device": device.type, "batch": batch, "seq_len": seq_len,
                        "weights_dtype": "torch.bfloat16" if row["switches"]["precision"] == "bf16_weights"
                        else "torch.float32"})
            row.setdefault("train_step_flops", flops["total"])
            row.setdefault("flops", flops)
            add_fractions(row, row["train_step_flops"], peak)
            row["peak_flops_per_s"] = peak
            log(f"[roofline] {name} {batch}x{seq_len} {row['path']:7s} {row['variant']:44s} "
                f"{row['step_time_s']:.4f} s/step  {100 * row['fraction_of_peak']:.1f}% of peak")
        rows += shape_rows
        summaries.append(summarise_shape(batch, seq_len, shape_rows))
    return {"info": info, "flops_by_top_module": rows[0]["flops"]["forward_by_top_module"] if rows else {},
            "rows": rows, "summary": summaries, "time_split": splits, "models": models}


def memory(name: str, device, seq_len: int, variant: dict, start: int, max_s: float, max_batch: int | None = None,
           models: Models | None = None, steps: int = 2, log=print) -> dict:
    """Largest Trainer-path batch at `seq_len` tokens without, then with gradient checkpointing (that search starts
    from the batch found without it, which fits all the more with checkpointing)."""
    config, image = config_for(name)
    models = models or Models(config, device)
    models.drop("bf16_weights")
    model = models.get(variant["precision"])
    out = {}
    for checkpointing in (False, True):
        key = "with_checkpointing" if checkpointing else "without_checkpointing"
        first = max(start, (out.get("without_checkpointing") or {}).get("batch") or 0)
        out[key] = trainer_memory_search(model, config, image, seq_len, device, variant, checkpointing, first, max_s,
                                         max_batch, steps)
        peak = out[key]["peak_allocated_bytes"]
        log(f"[roofline] {name} largest batch at {seq_len} tokens, {key.replace('_', ' ')}: {out[key]['batch']} "
            f"(peak {'-' if peak is None else f'{peak / 2**30:.1f} GiB'}, {out[key]['stopped']}, "
            f"{out[key]['search_s']:.0f} s, {len(out[key]['tries'])} tries)")
    out["variant"] = variant_name(variant)
    return out
