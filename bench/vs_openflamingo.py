"""CosMo vs OpenFlamingo at equal shapes, both run on the same torch/transformers in one venv.

    python bench/vs_openflamingo.py --output vs_openflamingo.json [--quick] [--venv DIR]

The first run creates `~/.cache/cosmo_vl/venvs/openflamingo` (recipe in `bench/_peer_env.py`: torch 2.14.1 +
torchvision 0.29.1, open-flamingo 2.0.1 without its torch pin, open_clip, transformers 5.23.0, this package in
development mode; a few minutes) and later runs reuse it. Every measurement is then a separate process of this
script in that venv (`--worker TASK`), so both models use the same interpreter and libraries and each peak-memory
figure belongs to one measurement only.

Shapes: the same ViT (open_clip config registered on the fly / CLIPVisionConfig) and the same Llama-style LM
(saved once per worker from a fixed seed, loaded by both). OpenFlamingo: cross-attention before every decoder
layer (its 3B setting). CosMo: the lower half of the LM text-only, cross-attention before every upper layer
(`unimodal_depth = layers / 2`, interval 1, as the `cosmo-2b` preset). Both: 6-layer resampler with 64 latents,
cross-attention 8 x 64 heads with FF x4, vision tower and LM frozen.

A second CosMo variant, `cosmo/interval2`, cross-attends before every second upper layer. The CosMo reference
repository has two OPT-IML-1.3B training configurations: the 18M-sample baseline (interval 1, cross-attention
compress ratio 1) and the full-data 180M-sample one (interval 2, compress ratio 2). The paper's claim of 34% of
OpenFlamingo's learnable parameters is out of reach for interval 1 (about 0.50 at the 2.1B shape), while interval 2
comes near it (0.29, or 0.32 against OpenFlamingo with frozen LM embeddings), so every CosMo figure is given for
both: keys without a suffix are interval 1, keys ending in `_interval2` the second variant. The 2.1B-shape count
also covers interval 2 with compress ratio 2.

Measured:
- training step: forward + backward + optimizer step (transformers' Trainer default: fused AdamW) on a batch of
  image-caption pairs (one image per sample; CosMo then also computes its contrastive loss, as it does in
  training); warm-up steps, then the median of timed steps.
  The models are timed in ONE process, alternating steps (order flipped each round), so that load from other
  processes on a shared CPU hits both alike; generation is timed the same way;
- peak memory: growth of the process's resident set size from before the model is built to the high-water mark of
  the training steps (weights + gradients + optimizer states + activations + allocator caches). tracemalloc cannot
  see torch's allocations, so the kernel's counters are used (`/proc/self/clear_refs` resets VmHWM);
- trainable parameters: as each recipe configures them (OpenFlamingo trains its LM input embeddings by default),
  and OpenFlamingo with `freeze_lm_embeddings=True` for a like-for-like figure;
- generation: greedy, exactly 32 new tokens, a few-shot prompt with 1 and 4 images; tokens/s of the whole
  `generate` call (media encoding included, as both models encode media per call). At batch 1
  (`generate_tokens_per_s_ratio`) and at batch 8 (`..._batch8`: the prompt repeated 8 times, 8 x images, all
  generated tokens counted). Batch-1 decoding on a CPU is bound by reading the shared LM's weights for every token,
  which hides the cross-attention keys/values OpenFlamingo recomputes from all media latents at every step;
  batched decoding, as in evaluation, shows more of it;
- generation ceiling: the batch-1 tasks also time the bare LM both models wrap (no images; the media token is
  just a token to it) generating the same tokens from the same prompt ids. `generate_ceiling_ratio` = OpenFlamingo's
  time / the bare LM's time: the largest generation speed ratio vs OpenFlamingo that any model running this LM plus
  anything extra could reach. The same rounds time encoding the prompt's images alone (CosMo's ViT + resampler,
  the shapes both models share); `generate_ceiling_with_encoding_ratio_by_images` = OpenFlamingo's time / (bare LM
  + encoding): the bound for a model that also encodes its images in every call, as both do.

OpenFlamingo needs one shim on transformers 5 (see `_workload._AttentionMaskDefault`): `generate` may call the LM
without `attention_mask`, which `FlamingoLMMixin.forward` requires positionally; the shim defaults it to None.
No math of OpenFlamingo is changed. Absolute CPU timings are noisy (2 shared cores): read the ratios.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peer_env  # noqa: E402

TARGETS = {
    "train_step_time_ratio": ("<=", 0.6),
    "trainable_params_ratio": ("<=", 0.4),
    "generate_tokens_per_s_ratio": (">=", 2.0),
}
# Key suffix -> CosMo variant name; the unsuffixed keys are interval 1.
COSMO_VARIANTS = {"": "cosmo", "_interval2": "cosmo/interval2"}
# Key infix -> OpenFlamingo variant: as its factory builds it (LM input embeddings trained), and with them frozen.
PEERS = {"": "openflamingo", "_frozen_embeddings": "openflamingo/frozen_embeddings"}
GEN_BATCHES = {1: "", 8: "_batch8"}  # batch -> key infix

SHIMS = [
    "OpenFlamingo generate on transformers 5: transformers' generate may call the language model without an "
    "`attention_mask` argument, but FlamingoLMMixin.forward(self, input_ids, attention_mask, **kwargs) requires it "
    "positionally (TypeError: missing 1 required positional argument: 'attention_mask'). A one-method mixin, "
    "applied with OpenFlamingo's own extend_instance, gives it the default None (read by the LM as an all-ones "
    "mask) and forwards everything unchanged. No OpenFlamingo math is changed.",
]


def shapes(quick: bool) -> dict:
    if quick:
        return {
            "vision": {"width": 384, "layers": 6, "patch": 32, "image": 224},
            "lm": {"hidden": 512, "layers": 8, "heads": 8, "intermediate": 1408, "vocab": 32000},
        }
    return {
        "vision": {"width": 512, "layers": 8, "patch": 32, "image": 224},
        "lm": {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 2048, "vocab": 32000},
    }


def gen_task_name(num_media: int, batch: int) -> str:
    return f"generate/{num_media}img" + ("" if batch == 1 else f"/batch{batch}")


def plan(quick: bool) -> list[dict]:
    shape = shapes(quick)
    batch = {"batch": 2, "seq_len": 128, "num_media": 1, "frames": 1}
    warmup, iters = (2, 6) if quick else (3, 10)
    gen_iters = {1: (1, 4), 8: (1, 3)} if quick else {1: (2, 6), 8: (1, 4)}  # (warm-up, timed) per batch
    cosmo = [{"model": "cosmo"}, {"model": "cosmo", "cross_attention_interval": 2}]
    peers = [{"model": "openflamingo"}, {"model": "openflamingo", "freeze_lm_embeddings": True}]
    variants = cosmo + peers
    tasks = [{"name": "released_params", "kind": "released_params"},
             {"name": "pair_train", "kind": "pair_train", "shape": shape, "batch": batch, "variants": variants,
              "warmup": warmup, "iters": iters}]
    for v in variants:  # memory and parameters: one process per model, a few steps
        tasks.append({"name": f"train/{_peer_env.variant_name(v)}", "kind": "train", "shape": shape, "batch": batch,
                      "warmup": 1, "iters": 2, **v})
    for rows in GEN_BATCHES:
        gen_variants = cosmo + peers[:1] + ([{"model": "lm_only"}] if rows == 1 else [])
        for n in (1, 4):
            tasks.append({"name": gen_task_name(n, rows), "kind": "pair_generate", "shape": shape, "num_media": n,
                          "batch": rows, "new_tokens": 32, "warmup": gen_iters[rows][0], "iters": gen_iters[rows][1],
                          "variants": gen_variants})
    return tasks


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def summarise(results: dict, quick: bool, info: dict, wall: float) -> dict:
    tr = {k.split("train/", 1)[1]: v for k, v in results.items() if k.startswith("train/")}
    ok = lambda r: r is not None and "error" not in r  # noqa: E731
    out: dict = {}
    errors = {k: v["error"][-1500:] for k, v in results.items() if "error" in v}
    pair = results.get("pair_train")
    times = pair["step_time_s"] if ok(pair) else {}
    fastest = pair.get("min_step_time_s", {}) if ok(pair) else {}
    # Contention from other processes only ever adds time: the fastest of the timed repeats is the least
    # disturbed estimate of each model's own cost, reported beside the medians.
    robust = {}
    for suffix, cosmo in COSMO_VARIANTS.items():
        ours = tr.get(cosmo)
        for peer_suffix, peer_name in PEERS.items():
            key, peer = peer_suffix + suffix, tr.get(peer_name)
            if cosmo in times and peer_name in times:
                out["train_step_time_ratio" + key] = ratio(times[cosmo], times[peer_name])
            if cosmo in fastest and peer_name in fastest:
                robust["train_step_time_ratio" + key] = ratio(fastest[cosmo], fastest[peer_name])
            if ok(ours) and ok(peer):
                out["trainable_params_ratio" + key] = ratio(ours["params"]["trainable"], peer["params"]["trainable"])
                out["peak_memory_ratio" + key] = ratio(ours["peak_rss_delta_bytes"], peer["peak_rss_delta_bytes"])
    for suffix, cosmo in COSMO_VARIANTS.items():
        for rows, infix in GEN_BATCHES.items():
            by_images = {}
            for n in (1, 4):
                g = results.get(gen_task_name(n, rows))
                if ok(g) and cosmo in g["tokens_per_s"]:
                    by_images[str(n)] = ratio(g["tokens_per_s"][cosmo], g["tokens_per_s"]["openflamingo"])
                    if "best_tokens_per_s" in g:
                        robust[f"generate_tokens_per_s_ratio{infix}_{n}img{suffix}"] = ratio(
                            g["best_tokens_per_s"][cosmo], g["best_tokens_per_s"]["openflamingo"])
            if by_images:
                out[f"generate_tokens_per_s_ratio{infix}{suffix}"] = min(by_images.values())  # the less favourable
                out[f"generate_tokens_per_s_ratio{infix}_by_images{suffix}"] = by_images
    ceiling, ceiling_encoding = {}, {}
    for n in (1, 4):
        g = results.get(gen_task_name(n, 1))
        if ok(g) and "lm_only" in g["time_s"]:
            ceiling[str(n)] = ratio(g["tokens_per_s"]["lm_only"], g["tokens_per_s"]["openflamingo"])
            robust[f"generate_ceiling_ratio_{n}img"] = ratio(
                g["best_tokens_per_s"]["lm_only"], g["best_tokens_per_s"]["openflamingo"])
        if ok(g) and "media_encoding" in g["time_s"]:
            ceiling_encoding[str(n)] = ratio(g["time_s"]["openflamingo"],
                                             g["time_s"]["lm_only"] + g["time_s"]["media_encoding"])
    if ceiling:
        out["generate_ceiling_ratio"] = min(ceiling.values())
        out["generate_ceiling_ratio_by_images"] = ceiling
    if ceiling_encoding:
        out["generate_ceiling_with_encoding_ratio_by_images"] = ceiling_encoding
    if robust:
        out["ratios_from_fastest_repeat"] = robust
    released = results.get("released_params")
    if ok(released):
        out["trainable_params_ratio_released_2b"] = released["ratio"]
        out["trainable_params_ratio_released_2b_frozen_embeddings"] = released["ratio_frozen_embeddings"]
        for name, v in released.get("variants", {}).items():
            out[f"trainable_params_ratio_released_2b_{name}"] = v["ratio"]
            out[f"trainable_params_ratio_released_2b_frozen_embeddings_{name}"] = v["ratio_frozen_embeddings"]
    targets = {key + suffix: t for suffix in COSMO_VARIANTS for key, t in TARGETS.items()}
    out["targets"] = {
        key: {"target": f"{op} {val}", "measured": out.get(key),
              "met": None if out.get(key) is None else (out[key] <= val if op == "<=" else out[key] >= val)}
        for key, (op, val) in targets.items()
    }
    depth = shapes(quick)["lm"]["layers"] // 2
    out["details"] = {
        "benchmark": "vs_openflamingo",
        "quick": quick,
        "shape": shapes(quick),
        "train_batch": plan(quick)[1]["batch"],
        "cosmo": {"unimodal_depth": depth, "cross_attention_interval": 1},
        "cosmo/interval2": {"unimodal_depth": depth, "cross_attention_interval": 2},
        "openflamingo": {"cross_attn_every_n_layers": 1},
        "generate": {"new_tokens": 32, "batches": list(GEN_BATCHES), "images": [1, 4]},
        "machine": info,
        "load_average_at_end": os.getloadavg(),
        "wall_time_s": round(wall, 1),
        "results": results,
        "openflamingo_shims": SHIMS,
        "notes": [
            "Absolute CPU times are noisy (a small shared CPU, other processes may run): compare the ratios, which "
            "come from the same machine, venv and run.",
            "peak memory = high-water resident set size during the training steps minus the resident size before the "
            "model was built (weights + grads + AdamW states + activations + allocator caches); one process per "
            "measurement. tracemalloc does not see torch's allocator.",
            "Step and generation times come from one process holding both models, alternating calls; peak memory and "
            "parameter counts from one process per model.",
            "train_step_time_ratio and peak_memory_ratio compare against OpenFlamingo as configured by its factory "
            "(LM input embeddings trained); *_frozen_embeddings against freeze_lm_embeddings=True.",
            "Keys without a suffix are CosMo with cross-attention before every upper layer (interval 1, as the "
            "cosmo-2b preset and the reference repository's 18M-sample configuration); keys ending in _interval2 "
            "are CosMo with cross-attention before every second upper layer (the reference repository's full-data "
            "configuration, which also uses compress ratio 2; the paper's 34% learnable-parameter claim is only "
            "approached by interval 2). *_released_2b_interval2_compress2 counts "
            "that full configuration at the 2.1B shape.",
            "generate_tokens_per_s_ratio is the smaller of the 1-image and 4-image ratios at batch 1; "
            "generate_tokens_per_s_ratio_batch8 the same at batch 8 (the prompt repeated 8 times, 8 x images, "
            "tokens/s over all generated tokens). Batch-1 CPU decoding is bound by reading the shared LM's weights "
            "per token, which hides OpenFlamingo's per-step cross-attention keys/values over all media latents.",
            "generate_ceiling_ratio = OpenFlamingo's generation time / the bare LM's (the LM both models wrap, same "
            "prompt ids without images, same new tokens), the smaller over 1 and 4 images: the largest generation "
            "speed ratio vs OpenFlamingo that any model running this LM plus anything extra could reach. "
            "generate_ceiling_with_encoding_ratio_by_images adds the time of encoding the prompt's images (the "
            "shared ViT and resampler shapes, timed alone with CosMo's encoder in the same rounds) to the bare LM's: "
            "the bound for a model that must also encode its images in each call, as both do.",
        ],
    }
    if errors:
        out["details"]["errors"] = errors
    return out


def main(argv=None) -> int:
    args, python = _peer_env.peer_cli(__doc__.split("\n\n")[0], "smaller shapes and fewer iterations (minutes on 2 cores)",
                                      argv)
    if python is None:
        return 0
    start = time.perf_counter()
    info = _peer_env.peer_machine_info(python)
    print(f"[vs_openflamingo] torch {info['torch']}, transformers {info['transformers']}, "
          f"open-flamingo {info.get('open_flamingo')}, {info['cpu_count']} CPUs ({info.get('cpu_model')})")
    results = {}
    for task in plan(args.quick):
        t = time.perf_counter()
        print(f"[vs_openflamingo] {task['name']} ...", flush=True)
        results[task["name"]] = _peer_env.run_worker(python, Path(__file__).resolve(), task)
        r = results[task["name"]]
        if "error" in r:
            brief = "error"
        elif task["kind"] == "released_params":
            brief = f"trainable ratio at 2.1B shapes {r['ratio']:.3f}" + "".join(
                f", {k} {v['ratio']:.3f}" for k, v in r.get("variants", {}).items())
        elif task["kind"] == "train":
            brief = (f"peak +{r['peak_rss_delta_bytes'] / 2**20:.0f} MiB, {r['params']['trainable'] / 1e6:.2f}M "
                     "trainable")
        elif task["kind"] == "pair_train":
            brief = ", ".join(f"{k} {v:.3f} s/step" for k, v in r["step_time_s"].items())
        else:
            brief = ", ".join(f"{k} {v:.1f} tokens/s" for k, v in r["tokens_per_s"].items())
        print(f"[vs_openflamingo]   {brief} ({time.perf_counter() - t:.0f} s)", flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".partial.json").write_text(json.dumps(results, indent=2))
    summary = summarise(results, args.quick, info, time.perf_counter() - start)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    args.output.with_suffix(".partial.json").unlink(missing_ok=True)
    top = {k: v for k, v in summary.items() if k not in ("details",)}
    print(json.dumps(top, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
