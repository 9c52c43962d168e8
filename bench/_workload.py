"""Models and workloads of the benchmarks: CosMo and OpenFlamingo built at equal shapes, a training step, generation.

Shapes (a `shape` dict):
    vision: {"width", "layers", "patch", "image"} - the ViT of both models (an open_clip config registered on the fly
            for OpenFlamingo, a `CLIPVisionConfig` with GELU for CosMo; heads = width / 64, MLP x4, random weights).
    lm:     {"hidden", "layers", "heads", "intermediate", "vocab"} - one Llama-style decoder, built from its config with
            a fixed seed and saved to a temporary folder with a word-level tokenizer of exactly `vocab` entries, then
            loaded by both models (OpenFlamingo through its own `create_model_and_transforms`).
Both models use the same resampler (6 layers, 8 x 64 heads, 64 latents) and cross-attention blocks (8 x 64, FF x4).
OpenFlamingo cross-attends before every decoder layer (`cross_attn_every_n_layers=1`, as its 3B release); CosMo
cross-attends from `unimodal_depth = layers / 2` before every upper layer (interval 1, as the `cosmo-2b` preset) or
every `cross_attention_interval`-th one (a task's `cross_attention_interval`). `lm_only` is the bare LM both wrap.
Nothing in here needs the network: vision towers start from random weights (`clip_vision_encoder_pretrained=None`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|endofchunk|>", "<image>"]
UNK, BOS, EOS, PAD, EOC, MEDIA = range(len(SPECIALS))


# ------------------------------------------------------------------------------------------------------ builders
def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer with exactly `vocab_size` entries (specials first), so OpenFlamingo's
    `resize_token_embeddings(len(tokenizer))` keeps the LM's vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|endofchunk|>", "<image>"],
    )
    fast.save_pretrained(folder)


def llama_config(lm: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=lm["hidden"], intermediate_size=lm["intermediate"], num_hidden_layers=lm["layers"],
        num_attention_heads=lm["heads"], num_key_value_heads=lm["heads"], vocab_size=lm["vocab"],
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )


def save_lm(folder: Path, lm: dict, seed: int = 0) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(llama_config(lm)).save_pretrained(folder)
    save_tokenizer(folder, lm["vocab"])
    return folder


def clip_vision_config(vision: dict):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=vision["width"], intermediate_size=4 * vision["width"], num_hidden_layers=vision["layers"],
        num_attention_heads=max(vision["width"] // 64, 1), patch_size=vision["patch"], image_size=vision["image"],
        hidden_act="gelu",  # open_clip's non-quickgelu ViTs use exact GELU
    )


def build_cosmo(shape: dict, lm_dir: Path, max_media: int = 16, max_frames: int = 16,
                cross_attention_interval: int = 1):
    """CosMo around the saved LM and a random CLIP ViT; towers frozen (the CosMo recipe)."""
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    from cosmo_vl.modeling import CosmoConfig, CosmoForConditionalGeneration

    causal_lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    vision = CLIPVisionModel(clip_vision_config(shape["vision"]))
    n = shape["lm"]["layers"]
    config = CosmoConfig(
        vision_config=vision.config, text_config=causal_lm.config, unimodal_depth=n // 2,
        cross_attention_interval=cross_attention_interval, cross_attention_heads=8, cross_attention_head_dim=64,
        cross_attention_ff_mult=4, num_latents=64,
        resampler_depth=6, resampler_heads=8, resampler_head_dim=64, resampler_ff_mult=4,
        max_num_media=max_media, max_num_frames=max_frames, media_token_id=MEDIA, endofchunk_token_id=EOC,
        freeze_vision_tower=True, freeze_language_model=True,
    )
    model = CosmoForConditionalGeneration(config, vision_model=vision, causal_lm=causal_lm)
    return model


def register_open_clip_vit(vision: dict) -> str:
    """Register an open_clip model config with this ViT shape (and a 1-layer dummy text tower); return its name."""
    import open_clip

    name = f"cosmo-bench-vit-w{vision['width']}-l{vision['layers']}-p{vision['patch']}-i{vision['image']}"
    with tempfile.TemporaryDirectory(prefix="open_clip_cfg_") as folder:  # read into open_clip's registry at once
        (Path(folder) / f"{name}.json").write_text(json.dumps({
            "embed_dim": 64,
            "vision_cfg": {"image_size": vision["image"], "layers": vision["layers"], "width": vision["width"],
                           "patch_size": vision["patch"]},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1},
        }))
        open_clip.add_model_config(folder)
    return name


def build_openflamingo(shape: dict, lm_dir: Path, freeze_lm_embeddings: bool = False, cross_attn_every_n_layers: int = 1):
    """OpenFlamingo through its own factory: cross-attention before every (n-th) decoder layer, vision tower and LM
    frozen, perceiver + cross-attention (+ LM input embeddings unless `freeze_lm_embeddings`) trainable."""
    from open_flamingo import create_model_and_transforms

    model, _, _ = create_model_and_transforms(
        clip_vision_encoder_path=register_open_clip_vit(shape["vision"]),
        clip_vision_encoder_pretrained=None,
        lang_encoder_path=str(lm_dir),
        tokenizer_path=str(lm_dir),
        cross_attn_every_n_layers=cross_attn_every_n_layers,
        use_local_files=True,
        freeze_lm_embeddings=freeze_lm_embeddings,
    )
    apply_generate_shim(model)
    return model


class _AttentionMaskDefault:
    """transformers 5 `generate` calls the LM without an `attention_mask` when none is needed (e.g. an all-ones mask),
    but `FlamingoLMMixin.forward(self, input_ids, attention_mask, **kwargs)` requires one. This mixin only gives that
    argument a default of None (which the LM reads as "attend to every token") and hands everything on unchanged."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return super().forward(input_ids, attention_mask, **kwargs)


def apply_generate_shim(model) -> None:
    """The only change made to OpenFlamingo for transformers 5 (see `_AttentionMaskDefault`); no math changes."""
    from open_flamingo.src.utils import extend_instance

    extend_instance(model.lang_encoder, _AttentionMaskDefault)


def parts(model) -> dict:
    """Parameter counts of the parts both recipes train: resampler and one cross-attention block."""
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    if hasattr(model, "perceiver"):  # OpenFlamingo
        blocks = [b for b in model.lang_encoder.gated_cross_attn_layers if b is not None]
        return {"resampler": numel(model.perceiver), "cross_attention_block": numel(blocks[0]),
                "cross_attention_blocks": len(blocks), "lm_input_embeddings": numel(model.lang_encoder.get_input_embeddings())}
    from cosmo_vl.modeling.cross_attention import GatedCrossAttentionBlock

    blocks = [m for m in model.modules() if isinstance(m, GatedCrossAttentionBlock)]
    inner = model.model
    return {"resampler": numel(inner.resampler), "cross_attention_block": numel(blocks[0]),
            "cross_attention_blocks": len(blocks),
            "contrastive_heads": numel(inner.text_pooler) + numel(inner.text_projection) + numel(inner.image_projection)
            + numel(inner.logit_scale)}


def count_params(model) -> dict:
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable": trainable, "total": total}


# ------------------------------------------------------------------------------------------------------- batches
def media_positions(seq_len: int, num_media: int) -> list[int]:
    """Media tokens spread evenly over the sequence, the first right after BOS (an interleaved document)."""
    step = max((seq_len - 1) // num_media, 1)
    return [1 + i * step for i in range(num_media)]


def make_batch(batch: int, seq_len: int, num_media: int, frames: int, image: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), vocab, (batch, seq_len), generator=g)
    ids[:, 0] = BOS
    for p in media_positions(seq_len, num_media):
        ids[:, p] = MEDIA
        if p > 1:
            ids[:, p - 1] = EOC
    labels = ids.clone()
    labels[ids == MEDIA] = -100
    labels[:, 0] = -100
    pixels = torch.randn(batch, num_media, frames, 3, image, image, generator=g)
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


# -------------------------------------------------------------------------------------------------- OpenFlamingo
def openflamingo_encode_frames(model, vision_x: torch.Tensor) -> None:
    """Video input for OpenFlamingo: `Flamingo._encode_vision_x` asserts F == 1, although its PerceiverResampler
    accepts (b, T, F, v, d) (frames flattened into the keys). This runs the same three stages as that method - its
    own frozen vision encoder under no_grad, its own perceiver, conditioning every layer - without the assertion.
    Used only by the frames-per-video scaling series, and flagged there."""
    b, t, f = vision_x.shape[:3]
    with torch.no_grad():
        tokens = model.vision_encoder(vision_x.flatten(0, 2))[1]
    latents = model.perceiver(tokens.reshape(b, t, f, *tokens.shape[1:]))
    for layer in model.lang_encoder._get_decoder_layers():
        layer.condition_vis_x(latents)


def openflamingo_loss(model, batch: dict) -> torch.Tensor:
    if batch["pixel_values"].shape[2] == 1:
        out = model(vision_x=batch["pixel_values"], lang_x=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"])
        return out.loss
    openflamingo_encode_frames(model, batch["pixel_values"])
    model._condition_media_locations(input_ids=batch["input_ids"])
    out = model.lang_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"])
    model.lang_encoder.clear_conditioned_layers()
    return out.loss


def cosmo_loss(model, batch: dict) -> torch.Tensor:
    # One image per sample is a pair batch: the CosMo step then also adds its contrastive loss, as in training.
    return model(**batch).loss


# ---------------------------------------------------------------------------------------------------- workloads
def build(task: dict, lm_dir: Path):
    if task["model"] == "cosmo":
        return build_cosmo(task["shape"], lm_dir, cross_attention_interval=task.get("cross_attention_interval", 1))
    if task["model"] == "lm_only":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(lm_dir)
    return build_openflamingo(task["shape"], lm_dir, freeze_lm_embeddings=task.get("freeze_lm_embeddings", False))


def few_shot_prompt(shape: dict, num_media: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids of a few-shot prompt with `num_media` images, repeated `batch` times, and random pixels
    (batch, num_media, 1, 3, H, W)."""
    g = torch.Generator().manual_seed(1)
    ids = [BOS]
    for i in range(num_media):  # shots: <image> caption <|endofchunk|>, then the query image with an open prompt
        ids.append(MEDIA)
        words = 12 if i < num_media - 1 else 3
        ids += torch.randint(len(SPECIALS), shape["lm"]["vocab"], (words,), generator=g).tolist()
        if i < num_media - 1:
            ids.append(EOC)
    image = shape["vision"]["image"]
    pixels = torch.randn(batch, num_media, 1, 3, image, image, generator=g)
    return torch.tensor([ids] * batch), pixels


def generate_call(kind: str, model, input_ids, attention_mask, pixels, kwargs: dict):
    """`generate` of a model kind (`cosmo`, `openflamingo`, `lm_only`) on the same prompt; the bare LM gets no media."""
    if kind == "cosmo":
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, **kwargs)
    if kind == "lm_only":
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return model.generate(vision_x=pixels, lang_x=input_ids, attention_mask=attention_mask, **kwargs)


def trainer_optimizer(model, lr: float = 1e-4) -> torch.optim.Optimizer:
    """The optimizer transformers' Trainer builds by default (fused AdamW on torch >= 2.8) over the trainable
    parameters, so a timed step is the step training runs."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, learning_rate=lr, report_to="none",
                                 use_cpu=not torch.cuda.is_available())
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls([p for p in model.parameters() if p.requires_grad], **kwargs)


def train_task(task: dict) -> dict:
    """Build the model, then time forward+backward+AdamW steps and record the peak resident memory."""
    from _peer_env import PeakMemory, median, rss_bytes, variant_name

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = save_lm(Path(tmp) / "lm", task["shape"]["lm"])
        rss_before_build = rss_bytes()
        model = build(task, lm_dir)
    model.train()
    params = count_params(model)
    params["parts"] = parts(model)
    loss_fn = cosmo_loss if task["model"] == "cosmo" else openflamingo_loss
    b = task["batch"]
    batch = make_batch(b["batch"], b["seq_len"], b["num_media"], b.get("frames", 1), task["shape"]["vision"]["image"],
                       task["shape"]["lm"]["vocab"])
    optimizer = trainer_optimizer(model)
    times = []
    with PeakMemory() as mem:
        for i in range(task["warmup"] + task["iters"]):
            start = time.perf_counter()
            loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            if i >= task["warmup"]:
                times.append(elapsed)
    return {
        "model": task["model"],
        "variant": variant_name(task),
        "step_time_s": median(times),
        "step_times_s": times,
        "loss": float(loss.detach()),
        "params": params,
        "peak_rss_delta_bytes": mem.peak - rss_before_build,  # weights + grads + optimizer + activations
        "step_peak_delta_bytes": mem.delta,  # above the built model: grads + optimizer + activations
        "rss_model_bytes": mem.base - rss_before_build,
        "peak_reset_supported": mem.resettable,
        "load_average": os.getloadavg(),
    }


def generate_task(task: dict) -> dict:
    """Greedy generation of exactly `new_tokens` tokens after a few-shot prompt with `num_media` images (batch 1)."""
    from _peer_env import median

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = save_lm(Path(tmp) / "lm", task["shape"]["lm"])
        model = build(task, lm_dir)
    model.eval()
    n, new = task["num_media"], task["new_tokens"]
    input_ids, pixels = few_shot_prompt(task["shape"], n)
    attention_mask = torch.ones_like(input_ids)
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1)
    times, out = [], None
    with torch.inference_mode():
        for i in range(task["warmup"] + task["iters"]):
            start = time.perf_counter()
            out = generate_call(task["model"], model, input_ids, attention_mask, pixels, kwargs)
            if i >= task["warmup"]:
                times.append(time.perf_counter() - start)
    generated = out.shape[1] - input_ids.shape[1]
    t = median(times)
    return {
        "model": task["model"],
        "num_media": n,
        "prompt_tokens": input_ids.shape[1],
        "new_tokens": generated,
        "time_s": t,
        "times_s": times,
        "tokens_per_s": generated / t,
        "load_average": os.getloadavg(),
    }


def flops_task(task: dict) -> dict:
    """FLOPs of one real training step (forward + backward) counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = save_lm(Path(tmp) / "lm", task["shape"]["lm"])
        model = build(task, lm_dir)
    model.train()
    b = task["batch"]
    batch = make_batch(b["batch"], b["seq_len"], b["num_media"], b.get("frames", 1), task["shape"]["vision"]["image"],
                       task["shape"]["lm"]["vocab"])
    loss_fn = cosmo_loss if task["model"] == "cosmo" else openflamingo_loss
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model, batch).backward()
    return {"model": task["model"], "train_step_flops": counter.get_total_flops()}


def released_params_task(task: dict) -> dict:
    """Trainable parameters at the released 2.1B shapes (CLIP ViT-L/14 + OPT-IML-1.3B), built on the meta device:
    CosMo's `cosmo-2b` preset vs OpenFlamingo's own PerceiverResampler and GatedCrossAttentionBlock classes at the
    same widths, cross-attention before all 24 layers, plus the OPT input embeddings it trains by default. The
    preset (interval 1) is also counted with cross-attention before every second upper layer, without and with the
    blocks' compress ratio 2 (the reference repository's full-data configuration)."""
    import copy

    from open_flamingo.src.helpers import GatedCrossAttentionBlock, PerceiverResampler

    from cosmo_vl.modeling import CosmoForConditionalGeneration, trainable_parameters
    from cosmo_vl.presets import get_config

    config = get_config("cosmo-2b")

    def cosmo_params(cfg) -> tuple[int, int]:
        with torch.device("meta"):
            ours, total, _ = trainable_parameters(CosmoForConditionalGeneration(cfg))
        return ours, total

    with torch.device("meta"):
        perceiver = PerceiverResampler(dim=config.vision_config.hidden_size)
        block = GatedCrossAttentionBlock(dim=config.text_config.hidden_size, dim_visual=config.vision_config.hidden_size)
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ours, total = cosmo_params(config)
    layers = config.text_config.num_hidden_layers
    embeddings = config.text_config.vocab_size * config.text_config.hidden_size
    peer_frozen = numel(perceiver) + layers * numel(block)
    variants = {}
    for name, interval, compress in (("interval2", 2, 1), ("interval2_compress2", 2, 2)):
        cfg = copy.deepcopy(config)
        cfg.cross_attention_interval = interval
        cfg.cross_attention_compress_ratio = compress
        trainable, _ = cosmo_params(cfg)
        variants[name] = {
            "cross_attention_interval": interval, "cross_attention_compress_ratio": compress,
            "cross_attention_layers": len(cfg.cross_attention_layer_ids), "cosmo_trainable": trainable,
            "ratio": trainable / (peer_frozen + embeddings), "ratio_frozen_embeddings": trainable / peer_frozen,
        }
    return {
        "cosmo_trainable": ours,
        "cosmo_total": total,
        "openflamingo_trainable": peer_frozen + embeddings,
        "openflamingo_trainable_frozen_embeddings": peer_frozen,
        "ratio": ours / (peer_frozen + embeddings),
        "ratio_frozen_embeddings": ours / peer_frozen,
        "variants": variants,
        "text": {"layers": layers, "hidden": config.text_config.hidden_size, "vocab": config.text_config.vocab_size,
                 "cosmo_unimodal_depth": config.unimodal_depth,
                 "cosmo_cross_attention_interval": config.cross_attention_interval,
                 "cosmo_cross_attention_layers": len(config.cross_attention_layer_ids)},
    }


def _paired(task: dict, lm_dir: Path) -> list[tuple[str, object]]:
    variants = task.get("variants") or [{"model": "cosmo"}, {"model": "openflamingo"}]
    from _peer_env import variant_name

    return [(variant_name(v), build({**task, **v}, lm_dir)) for v in variants]


def _kind(name: str) -> str:
    return name.split("/", 1)[0]


def pair_train_task(task: dict) -> dict:
    """Step times of CosMo and OpenFlamingo in ONE process, alternating steps (the order flips every round), so
    that load from other processes on a shared CPU hits both alike. Memory is measured elsewhere, per process."""
    from _peer_env import median

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = save_lm(Path(tmp) / "lm", task["shape"]["lm"])
        models = _paired(task, lm_dir)
    b = task["batch"]
    batch = make_batch(b["batch"], b["seq_len"], b["num_media"], b.get("frames", 1), task["shape"]["vision"]["image"],
                       task["shape"]["lm"]["vocab"])
    state = {}
    for name, model in models:
        model.train()
        opt = trainer_optimizer(model)
        state[name] = (model, opt, cosmo_loss if _kind(name) == "cosmo" else openflamingo_loss, [])
    for i in range(task["warmup"] + task["iters"]):
        order = list(state) if i % 2 == 0 else list(state)[::-1]
        for name in order:
            model, opt, loss_fn, times = state[name]
            start = time.perf_counter()
            loss_fn(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= task["warmup"]:
                times.append(time.perf_counter() - start)
    return {"step_time_s": {n: median(s[3]) for n, s in state.items()},
            "min_step_time_s": {n: min(s[3]) for n, s in state.items()},
            "step_times_s": {n: s[3] for n, s in state.items()}, "load_average": os.getloadavg()}


def pair_generate_task(task: dict) -> dict:
    """Generation speed of CosMo, OpenFlamingo (and the bare LM, `lm_only`, which gets the same prompt ids without
    images) in one process, alternating calls (see `pair_train_task`). `batch` rows repeat the prompt, each with
    its own images; tokens/s counts the new tokens of all rows."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = save_lm(Path(tmp) / "lm", task["shape"]["lm"])
        models = _paired(task, lm_dir)
    n, rows = task["num_media"], task.get("batch", 1)
    input_ids, pixels = few_shot_prompt(task["shape"], n, rows)
    out = time_generation(models, input_ids, pixels, task["new_tokens"], task["warmup"], task["iters"])
    return {"num_media": n, "batch": rows, **out, "load_average": os.getloadavg()}


def time_generation(models: list[tuple[str, object]], input_ids, pixels, new_tokens: int, warmup: int, iters: int,
                    sync=lambda: None) -> dict:
    """Greedy `generate` of exactly `new_tokens` tokens by each (name, model), alternating calls (the order flips
    every round); with `cosmo` and `lm_only` both present, also CosMo's media encoding alone. `sync` waits for the
    device (CUDA) before a call's clock stops."""
    from _peer_env import median

    attention_mask = torch.ones_like(input_ids)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1)
    rows = input_ids.shape[0]
    calls = [(name, lambda model=model, name=name: generate_call(_kind(name), model, input_ids, attention_mask,
                                                                  pixels, kwargs)) for name, model in models]
    names = [name for name, _ in models]
    if "lm_only" in names and "cosmo" in names:  # media encoding alone: what any Flamingo-style model adds to the LM
        encoder = dict(models)["cosmo"].model
        calls.append(("media_encoding", lambda: encoder.encode_media(pixels)))
    times = {name: [] for name, _ in calls}
    generated = {}
    with torch.inference_mode():
        for name, model in models:
            model.eval()
        for i in range(warmup + iters):
            for name, call in (calls if i % 2 == 0 else calls[::-1]):
                sync()
                start = time.perf_counter()
                out = call()
                sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
                if name != "media_encoding":
                    generated[name] = out.shape[1] - input_ids.shape[1]
    return {
        "prompt_tokens": input_ids.shape[1],
        "new_tokens": generated,
        "time_s": {k: median(v) for k, v in times.items()},
        "times_s": times,
        "tokens_per_s": {k: rows * generated[k] / median(v) for k, v in times.items() if k in generated},
        "best_tokens_per_s": {k: rows * generated[k] / min(v) for k, v in times.items() if k in generated},
    }


TASKS = {"pair_train": pair_train_task, "pair_generate": pair_generate_task,
         "released_params": released_params_task, "train": train_task, "generate": generate_task, "flops": flops_task}


def worker_main(task_json: str, output: str) -> None:
    """Entry of `--worker`: run one task in this (fresh) process and write its JSON result."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    torch.set_num_threads(os.cpu_count() or 1)
    task = json.loads(task_json)
    result = TASKS[task["kind"]](task)
    result["task"] = task
    Path(output).write_text(json.dumps(result, indent=2))
