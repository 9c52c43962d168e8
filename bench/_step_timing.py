"""Shared pieces of the training-step benchmarks: configs, batches, timers, speed switches and the bare loop.

A *variant* names the speed switches of one measured run:
    precision: "bf16_weights" (the model cast to bf16, plain loop), "autocast" (fp32 master weights + bf16 autocast,
               what `TrainingArguments(bf16=True)` runs) or "fp32";
    optim:     "adamw_torch" (torch AdamW, foreach) or "adamw_torch_fused" (fused kernel);
    tf32:      TF32 matmuls for the fp32 ops left (CUDA only; what `TrainingArguments(tf32=...)` switches);
    sdpa:      the SDPA backend tried first ("default" leaves torch's own order; "flash", "efficient", "cudnn",
               "math" put that one first, the others stay allowed as fallbacks, e.g. for masked attention).
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode  # the base of FlopCounterMode

OPTIMS = ("adamw_torch", "adamw_torch_fused")
PRECISIONS = ("bf16_weights", "autocast", "fp32")
SDPA_BACKENDS = ("default", "flash", "efficient", "cudnn", "math")


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, device, warmup: int, iters: int) -> list[float]:
    """Seconds of each of `iters` calls of `fn` after `warmup` untimed ones (CUDA events on a GPU)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times


def matmul_peak(device, dtype, n: int, reps: int) -> dict:
    """Best FLOP/s of an (n, n) @ (n, n) matmul in `dtype`: the peak the step is compared against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(time_calls(lambda: a @ b, device, warmup=3, iters=reps))
    return {"n": n, "dtype": str(dtype), "best_time_s": best, "flops_per_s": 2 * n**3 / best}


# ------------------------------------------------------------------------------------------- configs and batches
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
    """(config, image size) of a benchmark config name: tiny (`cosmo-tiny`), mid, 2b (`cosmo-2b`)."""
    from cosmo_vl.presets import get_config

    if name == "tiny":
        return get_config("cosmo-tiny"), 32
    if name == "mid":
        return mid_config(), 224
    if name == "2b":
        return get_config("cosmo-2b"), 224
    raise KeyError(f"Unknown config {name!r}; use tiny, mid or 2b.")


def make_batch(config, batch: int, seq_len: int, image: int, device="cpu", dtype=torch.float32) -> dict:
    """A pair batch: (B, T) random ids with one image token after the first and `<|endofchunk|>` last; pixels
    (B, 1, 1, 3, H, W)."""
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


def build_model(config, device, dtype=torch.float32, seed: int = 0):
    """CosMo with random weights, initialised directly on `device` (a 2B model initialises in seconds on a GPU)."""
    from cosmo_vl.modeling import CosmoForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device):
        model = CosmoForConditionalGeneration(config)
    return model.to(dtype).train()


def attention_implementations(model) -> dict:
    config = model.config
    return {"model": config._attn_implementation, "text": config.text_config._attn_implementation,
            "vision": config.vision_config._attn_implementation}


# -------------------------------------------------------------------------------------------------- speed switches
def variant_name(variant: dict) -> str:
    parts = [variant["precision"], variant["optim"]]
    parts += ["tf32"] if variant.get("tf32") else []
    parts += [f"sdpa_{variant['sdpa']}"] if variant.get("sdpa", "default") != "default" else []
    return "+".join(parts)


def check_variant(variant: dict) -> dict:
    variant = {"tf32": False, "sdpa": "default", **variant}
    for key, allowed in (("precision", PRECISIONS), ("optim", OPTIMS), ("sdpa", SDPA_BACKENDS)):
        if variant.get(key) not in allowed:
            raise ValueError(f"Variant {variant}: {key} must be one of {allowed}, got {variant.get(key)!r}.")
    return variant


def set_tf32(enable: bool) -> None:
    """What `TrainingArguments(tf32=...)` does (transformers' own helper; the legacy flags where it is missing)."""
    try:
        from transformers.utils.import_utils import enable_tf32
    except ImportError:  # older transformers
        torch.backends.cuda.matmul.allow_tf32 = enable
        torch.backends.cudnn.allow_tf32 = enable
        return
    enable_tf32(enable)


def tf32_state() -> str:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


@contextlib.contextmanager
def speed_switches(device, tf32: bool = False, sdpa: str = "default"):
    """TF32 (CUDA only; the previous setting comes back afterwards) and the preferred SDPA backend."""
    cuda = torch.device(device).type == "cuda"
    saved = getattr(torch.backends, "fp32_precision", None)
    saved_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if saved is None else None
    if cuda:
        set_tf32(tf32)
    try:
        with sdpa_preference(sdpa):
            yield
    finally:
        if cuda and saved is not None:
            torch.backends.fp32_precision = saved
        elif cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy


def sdpa_preference(name: str):
    if name not in SDPA_BACKENDS:
        raise ValueError(f"sdpa must be one of {SDPA_BACKENDS}, got {name!r}.")
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    first = order[name]
    return sdpa_kernel([first] + [b for b in order.values() if b != first], set_priority=True)


def autocast_context(device, precision: str):
    if precision != "autocast":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def make_optimizer(params, optim: str, lr: float = 1e-4) -> torch.optim.Optimizer:
    """torch AdamW as the Trainer builds it for `optim` (foreach, or the fused kernel)."""
    return torch.optim.AdamW(params, lr=lr, fused=True if optim == "adamw_torch_fused" else None)


# ------------------------------------------------------------------------------------------------------ FLOPs
class AttentionKernels(TorchDispatchMode):
    """Counts the attention kernels that run: SDPA reaches a dispatch mode as its backend's op (e.g.
    `aten._scaled_dot_product_flash_attention`), so this shows which backend the model really uses. (Written here:
    FlopCounterMode only lists the ops it has FLOP formulas for, and none for the CPU kernels.)"""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if "attention" in name:
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


class StepCounter:
    """Context manager around one training step of `model`: total FLOPs (FlopCounterMode), the forward's FLOPs by
    top module (counted when the model's forward returns, since backward FLOPs are not attributed to modules
    reliably) and the attention kernels that ran. Entered and exited by hand where a step spans two callbacks."""

    def __init__(self, model):
        self.model, self.forward = model, None

    def __enter__(self):
        from torch.utils.flop_counter import FlopCounterMode

        self.flops, self.kernels = FlopCounterMode(display=False), AttentionKernels()
        self.hook = self.model.register_forward_hook(self._snapshot)
        self.flops.__enter__()
        self.kernels.__enter__()
        return self

    def _snapshot(self, module, args, output) -> None:
        if self.forward is None:
            self.forward = {str(k): sum(v.values()) for k, v in self.flops.get_flop_counts().items()}

    def __exit__(self, *exc):
        self.kernels.__exit__(*exc)
        self.flops.__exit__(*exc)
        self.hook.remove()

    def summary(self) -> dict:
        forward = self.forward or {}
        by_module = {}
        for name, flops in forward.items():  # "CosmoForConditionalGeneration.model.vision_model" -> "model.vision_..."
            parts = name.split(".")
            if name != "Global" and 1 < len(parts) <= 3:
                by_module[".".join(parts[1:])] = flops
        return {"total": self.flops.get_total_flops(), "forward": forward.get("Global"),
                "forward_by_top_module": by_module, "attention_kernels": dict(self.kernels.calls)}


def step_flops(model, data: dict, device, precision: str) -> dict:
    """FLOPs of one forward + backward of the model's loss (the optimizer update is O(parameters) and not counted)."""
    with StepCounter(model) as counter:
        with autocast_context(device, precision):
            loss = model(**data).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.summary()


# ------------------------------------------------------------------------------------------------- bare loop
def bare_steps(model, data: dict, device, variant: dict, warmup: int, iters: int) -> dict:
    """Time forward + backward + optimizer step + zero_grad of a plain loop (no Trainer) under `variant`."""
    variant = check_variant(variant)
    device = torch.device(device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], variant["optim"])
    times = []
    with speed_switches(device, variant["tf32"], variant["sdpa"]):
        tf32 = tf32_state() if device.type == "cuda" else None
        for i in range(warmup + iters):
            sync(device)
            start = time.perf_counter()
            with autocast_context(device, variant["precision"]):
                loss = model(**data).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    del optimizer
    return {"path": "bare", "variant": variant_name(variant), "switches": variant, "tf32_state": tf32,
            "step_time_s": median(times), "step_times_s": times, "loss": float(loss.detach())}


def add_fractions(row: dict, flops: float, peak: float) -> dict:
    row["achieved_flops_per_s"] = flops / row["step_time_s"]
    row["fraction_of_peak"] = row["achieved_flops_per_s"] / peak
    return row
