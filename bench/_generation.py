"""CosMo `generate` speed on any device at a preset's size, beside the bare LM it wraps (the ceiling).

The bare LM is the preset's decoder built alone (random weights, fixed seed); CosMo is built around a copy of it, so
both run the same LM weights in the same dtype with the default cache. The prompts and the timing loop are those of
`bench/vs_openflamingo.py` (`_workload.few_shot_prompt`, `_workload.time_generation`): greedy, exactly `new_tokens`
new tokens, a few-shot prompt with 1 or 4 images repeated over the batch rows; the bare LM gets the same ids without
images; calls alternate, the order flipping every round.
"""

from __future__ import annotations

import copy
import time

import torch

import _workload
from _step_timing import sync

PRESETS = {"tiny": "cosmo-tiny", "2b": "cosmo-2b"}


def build_pair(preset: str, device, dtype, seed: int = 0) -> list[tuple[str, object]]:
    """[("cosmo", CosMo), ("lm_only", the bare LM)] with the same LM weights, initialised on `device`."""
    from transformers import AutoModelForCausalLM

    from cosmo_vl.modeling import CosmoForConditionalGeneration
    from cosmo_vl.presets import get_config

    config = get_config(preset)
    torch.manual_seed(seed)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(config.text_config)
        cosmo = CosmoForConditionalGeneration(config, causal_lm=copy.deepcopy(lm))
    return [("cosmo", cosmo.to(dtype).eval()), ("lm_only", lm.to(dtype).eval())]


def few_shot_prompt(config, image: int, num_media: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_workload.few_shot_prompt` in the preset's token ids: (batch, T) ids - BOS, per shot `<image>` 12 words
    `<|endofchunk|>`, the query image with 3 words - and pixels (batch, num_media, 1, 3, H, W)."""
    vocab = config.text_config.vocab_size
    ids, pixels = _workload.few_shot_prompt({"lm": {"vocab": vocab}, "vision": {"image": image}}, num_media, batch)
    bos = config.text_config.bos_token_id
    specials = {config.media_token_id, config.endofchunk_token_id, bos, config.text_config.eos_token_id,
                config.text_config.pad_token_id} - {None}
    words = ids >= len(_workload.SPECIALS)
    out = ids.clone()
    plain = min(set(range(10, 11 + len(specials))) - specials)  # an ordinary word id
    out[words & torch.isin(ids, torch.tensor(sorted(specials)))] = plain
    out[ids == _workload.MEDIA] = config.media_token_id
    out[ids == _workload.EOC] = config.endofchunk_token_id
    if bos is not None:
        out[ids == _workload.BOS] = bos
    return out, pixels


def generation_benchmark(preset: str, device, dtype, batches=(1, 8), images=(1, 4), new_tokens: int = 32,
                         warmup: int = 2, iters: int = 5, models=None, log=print) -> dict:
    """Tokens/s of CosMo and of the bare LM (and CosMo's media encoding alone) for every (images, batch); `models`
    (from `build_pair`) are built here when not given."""
    device = torch.device(device)
    start = time.perf_counter()
    models = models or build_pair(PRESETS.get(preset, preset), device, dtype)
    build_s = time.perf_counter() - start
    config = dict(models)["cosmo"].config
    image = config.vision_config.image_size
    results = {}
    for rows in batches:
        for n in images:
            ids, pixels = few_shot_prompt(config, image, n, rows)
            out = _workload.time_generation(models, ids.to(device), pixels.to(device, dtype), new_tokens, warmup,
                                            iters, sync=lambda: sync(device))
            key = f"{n}img/batch{rows}"
            wrong = {k: v for k, v in out["new_tokens"].items() if v != new_tokens}
            if wrong:
                raise RuntimeError(f"{key}: generated {wrong} new tokens instead of {new_tokens}.")
            t = out["time_s"]
            out.update({"num_media": n, "batch": rows,
                        "cosmo_over_lm_tokens_per_s": out["tokens_per_s"]["cosmo"] / out["tokens_per_s"]["lm_only"],
                        "lm_plus_encoding_s": t["lm_only"] + t["media_encoding"],
                        "cosmo_overhead_beyond_lm_and_encoding_s": t["cosmo"] - t["lm_only"] - t["media_encoding"]})
            if device.type == "cuda":
                out["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            results[key] = out
            log(f"[generation] {key}: cosmo {out['tokens_per_s']['cosmo']:.1f} tokens/s, bare LM "
                f"{out['tokens_per_s']['lm_only']:.1f} tokens/s ({out['cosmo_over_lm_tokens_per_s']:.2f} of the "
                f"ceiling), encoding {t['media_encoding'] * 1e3:.1f} ms")
    cosmo = dict(models)["cosmo"]
    return {
        "preset": PRESETS.get(preset, preset), "device": device.type, "dtype": str(dtype), "new_tokens": new_tokens,
        "batches": list(batches), "images": list(images), "warmup": warmup, "iters": iters,
        "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models},
        "attn_implementation": {"text": cosmo.config.text_config._attn_implementation,
                                "vision": cosmo.config.vision_config._attn_implementation},
        "build_s": build_s, "results": results,
        "tokens_per_s": {k: v["tokens_per_s"] for k, v in results.items()},
        "cosmo_over_lm_tokens_per_s": {k: v["cosmo_over_lm_tokens_per_s"] for k, v in results.items()},
    }
