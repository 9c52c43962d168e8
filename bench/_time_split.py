"""Where a CosMo training step's time goes, without a per-module profile: three parts timed alone at the step's
shapes with CUDA events (perf_counter on a CPU) - the LM head + loss, the optimizer step, the LM's attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _step_timing import AttentionKernels, autocast_context, median, sdpa_preference, time_calls


def lm_head_loss(model, batch: int, seq_len: int, device, precision: str, warmup: int, iters: int) -> dict:
    """Forward + backward of the LM head and the token loss alone: (B*T, H) hidden states x the model's own head
    weight (V, H) -> logits, upcast to fp32 and cross-entropy as transformers' causal-LM loss does. The weight keeps
    the model's requires_grad (a frozen head only back-propagates to its input)."""
    weight = model.get_output_embeddings().weight  # (V, H)
    vocab, hidden = weight.shape
    dtype = torch.float32 if precision in ("autocast", "fp32") else weight.dtype
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch * seq_len, hidden, device=device, dtype=dtype, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (batch * seq_len,), device=device, generator=g)

    def step():
        with autocast_context(device, precision):
            logits = F.linear(x, weight)  # (B*T, V)
        F.cross_entropy(logits.float(), labels).backward()
        x.grad = weight.grad = None

    times = time_calls(step, device, warmup, iters)
    matmuls = 3 if weight.requires_grad else 2  # forward, input gradient (, weight gradient)
    return {"shape": [batch * seq_len, hidden, vocab], "head_requires_grad": weight.requires_grad,
            "matmul_flops": matmuls * 2 * batch * seq_len * hidden * vocab, "time_s": median(times), "times_s": times}


def optimizer_step(optimizer: torch.optim.Optimizer, device, warmup: int, iters: int,
                   max_grad_norm: float | None = 1.0) -> dict:
    """`optimizer.step()` alone over its own parameters (zero gradients: the update's cost does not depend on their
    values; the random weights move by the momentum left from training, which no later measurement depends on),
    and the gradient-norm clipping the Trainer runs before it (`max_grad_norm`)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    try:
        step_times = time_calls(optimizer.step, device, warmup, iters)
        clip_times = [] if max_grad_norm is None else time_calls(
            lambda: torch.nn.utils.clip_grad_norm_(params, max_grad_norm), device, warmup, iters)
    finally:
        for p in params:
            p.grad = None
    return {"optimizer": type(optimizer).__name__, "fused": bool(optimizer.defaults.get("fused")),
            "foreach": optimizer.defaults.get("foreach"), "parameters": sum(p.numel() for p in params),
            "dtype": str(params[0].dtype) if params else None,
            "step_time_s": median(step_times), "step_times_s": step_times,
            "clip_grad_norm_time_s": median(clip_times) if clip_times else None}


def backward_layers(model) -> int:
    """Decoder layers the backward pass runs through: from the lowest layer with a trainable parameter (its own or
    its cross-attention block's) up. Below it every layer is frozen and nothing trainable feeds it."""
    from cosmo_vl.modeling.lm_split import MultimodalDecoderLayer

    layers = [m for m in model.modules() if isinstance(m, MultimodalDecoderLayer)]
    trainable = [m.layer_idx for m in layers if any(p.requires_grad for p in m.parameters())]
    embeddings = model.get_input_embeddings().weight.requires_grad
    return len(layers) if embeddings or not trainable else len(layers) - min(trainable)


def attention(model, batch: int, seq_len: int, device, precision: str, sdpa: str, warmup: int, iters: int) -> dict:
    """Causal SDPA alone at the LM's shapes, (B, heads, T, head_dim) in the dtype the step's attention sees, forward
    and forward + backward; the step's share is estimated as every layer's forward plus the backward of the
    layers the gradient passes (`backward_layers`)."""
    text = model.config.text_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device=device, dtype=dtype, generator=g,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, heads, seq_len, head_dim, device=device, dtype=dtype, generator=g)

    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, head_dim)

    def forward_backward():
        forward().backward(grad)
        q.grad = k.grad = v.grad = None

    kernels = AttentionKernels()
    with sdpa_preference(sdpa):
        with torch.no_grad(), kernels:
            forward()
        fwd = time_calls(lambda: forward().detach(), device, warmup, iters)
        both = time_calls(forward_backward, device, warmup, iters)
    layers, back = text.num_hidden_layers, backward_layers(model)
    f, fb = median(fwd), median(both)
    return {"shape": [batch, heads, seq_len, head_dim], "dtype": str(dtype), "sdpa": sdpa,
            "kernels": kernels.calls, "forward_s": f, "forward_backward_s": fb, "layers": layers,
            "backward_layers": back, "estimated_step_s": layers * f + back * max(fb - f, 0.0)}


def time_split(model, batch: int, seq_len: int, device, precision: str, sdpa: str, optimizer, step_time_s: float,
               warmup: int, iters: int) -> dict:
    """The three parts and each one's share of the measured step time."""
    parts = {"lm_head_loss": lm_head_loss(model, batch, seq_len, device, precision, warmup, iters),
             "optimizer_step": optimizer_step(optimizer, device, warmup, iters),
             "attention": attention(model, batch, seq_len, device, precision, sdpa, warmup, iters)}
    times = {"lm_head_loss": parts["lm_head_loss"]["time_s"], "optimizer_step": parts["optimizer_step"]["step_time_s"],
             "clip_grad_norm": parts["optimizer_step"]["clip_grad_norm_time_s"],
             "attention": parts["attention"]["estimated_step_s"]}
    parts["share_of_step"] = {k: (v / step_time_s if v is not None else None) for k, v in times.items()}
    parts["step_time_s"] = step_time_s
    return parts
