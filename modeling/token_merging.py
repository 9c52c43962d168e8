"""Token merging (ToMe): bipartite soft matching, size-weighted merging, proportional attention, and a way to run it
inside transformers' ViT-style vision encoders (CLIP, SigLIP, ViT, ...) without forking their code.

One merge step on tokens ``x`` (B, N, C) with a similarity ``metric`` (B, N, Cm):

1. the metric is L2-normalised; tokens are split alternately into A (even positions) and B (odd positions);
2. each A token picks its most similar B token (cosine); protected tokens (the CLS token / the first k) have
   score -inf, so they are never merged and never receive a merge;
3. the `r` best A -> B edges are merged: ``x <- sum(s * x) / sum(s)``, ``s <- sum(s)`` (s = token size);
4. output order: the protected tokens, the unmerged A tokens, then the B tokens (each in their input order).

Padding is a token of size 0: it never changes a real token (its weight is 0), attention never looks at it
(``log(0) = -inf`` in the proportional-attention bias), and padded tokens are merged among themselves first.
"""

import math
import types
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

# Scores of the edges that involve padding (cosine scores are in [-1, 1]): padding goes first, padding -> padding
# before padding -> real (which leaves the real token unchanged); a real token moves into a padded slot last.
_PAD_TO_PAD, _PAD_TO_REAL, _REAL_TO_PAD = 3.0, 2.0, -10.0


# --------------------------------------------------------------------------------------------------- schedules
@dataclass
class MergeSchedule:
    """How many tokens each layer merges, optionally changing as training proceeds.

    r: tokens merged per layer at full strength: one int for every layer, or a per-layer list.
    layer_profile: "constant" (r in every layer) or "decreasing" (a linear ramp from 2r in the first layer to 0
        in the last, the same total as constant r; only for an int r).
    start_scale / end_scale: r is multiplied by ``start_scale + (end_scale - start_scale) * progress`` (rounded),
        so training can merge more (0 -> 1) or less (1 -> 0) as it goes.
    progress: training progress in [0, 1], a plain attribute: set it each step (`set_progress`, or a trainer
        callback setting ``<path>.progress``).
    """

    r: int | list[int] = 0
    layer_profile: str = "constant"
    start_scale: float = 1.0
    end_scale: float = 1.0
    progress: float = 1.0

    def __post_init__(self):
        if self.layer_profile not in ("constant", "decreasing"):
            raise ValueError(f"layer_profile={self.layer_profile!r}; use 'constant' or 'decreasing'.")
        if self.layer_profile == "decreasing" and not isinstance(self.r, int):
            raise ValueError("layer_profile='decreasing' needs an int r (the mean r per layer).")

    def set_progress(self, fraction: float) -> None:
        self.progress = min(max(float(fraction), 0.0), 1.0)

    @property
    def scale(self) -> float:
        return self.start_scale + (self.end_scale - self.start_scale) * self.progress

    def per_layer(self, num_layers: int) -> list[int]:
        if self.layer_profile == "decreasing":
            base = linear_r(2 * self.r, 0, num_layers)
        else:
            base = resolve_r(self.r, num_layers)
        return [max(0, round(r * self.scale)) for r in base]


def linear_r(start: float, end: float, num_layers: int) -> list[int]:
    """r changing linearly from `start` (first layer) to `end` (last layer), rounded."""
    if num_layers == 1:
        return [max(0, round(start))]
    return [max(0, round(start + (end - start) * i / (num_layers - 1))) for i in range(num_layers)]


def resolve_r(r: "int | Sequence[int] | MergeSchedule | None", num_layers: int) -> list[int]:
    """Per-layer r from an int (every layer), a per-layer list, or a `MergeSchedule` (at its current progress)."""
    if r is None:
        return [0] * num_layers
    if isinstance(r, MergeSchedule):
        return r.per_layer(num_layers)
    if isinstance(r, (int, float)):
        if r < 0:
            raise ValueError(f"r={r} must be >= 0.")
        return [int(r)] * num_layers
    r = [int(v) for v in r]
    if len(r) != num_layers or min(r, default=0) < 0:
        raise ValueError(f"A per-layer r needs {num_layers} non-negative values; got {r}.")
    return r


# ---------------------------------------------------------------------------------------------------- matching
@dataclass
class MergePlan:
    """The result of one bipartite soft matching; `merge` applies it to any (B, N, ...) tensor.

    unm_idx: (B, Na - r) unmerged A tokens (positions within A, ascending); src_idx / dst_idx: (B, r) merged A
    tokens and the B token each goes into; order: output permutation that puts the protected tokens first.
    """

    num_tokens: int
    r: int
    unm_idx: torch.Tensor
    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    order: torch.Tensor | None = None

    def merge(self, x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        """(B, N, ...) -> (B, N - r, ...). reduce="sum" adds each merged A token into its B token; "keep" drops it
        (B keeps its own value)."""
        b, n = x.shape[:2]
        rest = x.shape[2:]
        x = x.reshape(b, n, -1)
        c = x.shape[-1]
        xa, xb = x[:, ::2], x[:, 1::2]  # (B, Na, C), (B, Nb, C)
        unm = xa.gather(1, self.unm_idx[..., None].expand(-1, -1, c))
        if reduce == "sum" and self.r > 0:
            src = xa.gather(1, self.src_idx[..., None].expand(-1, -1, c))
            xb = xb.scatter_add(1, self.dst_idx[..., None].expand(-1, -1, c), src)
        elif reduce not in ("sum", "keep"):
            raise ValueError(f"reduce={reduce!r}; use 'sum' or 'keep'.")
        out = torch.cat([unm, xb], dim=1)  # (B, N - r, C)
        if self.order is not None:
            out = out[:, self.order]
        return out.reshape(b, n - self.r, *rest)


def _output_order(num_a: int, num_b: int, r: int, num_protected: int, device) -> torch.Tensor | None:
    """Permutation of ``[unmerged A; B]`` that moves the protected tokens (input positions < k) to the front in
    their input order. Protected A tokens are the first unmerged A tokens, protected B tokens the first B tokens."""
    if num_protected <= 1:
        return None  # one protected token is A[0], already first
    kept_a = num_a - r
    k_a, k_b = (num_protected + 1) // 2, num_protected // 2
    front = [j // 2 if j % 2 == 0 else kept_a + j // 2 for j in range(num_protected)]
    rest = list(range(k_a, kept_a)) + list(range(kept_a + k_b, kept_a + num_b))
    return torch.tensor(front + rest, device=device)


def max_merge(num_tokens: int, num_protected: int = 0) -> int:
    """Largest r one matching step allows: every unprotected A token merged (and at least one B target)."""
    num_a, num_b = (num_tokens + 1) // 2, num_tokens // 2
    k_a, k_b = (num_protected + 1) // 2, num_protected // 2
    return max(0, num_a - k_a) if num_b > k_b else 0


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, mask: torch.Tensor | None = None, num_protected: int = 0
) -> MergePlan:
    """Plan the merge of `r` tokens (clamped to `max_merge`).

    metric: (B, N, Cm) similarity features (keys averaged over heads, or the tokens themselves);
    mask: (B, N) bool, True = real token (None: all real); num_protected: the first k tokens are never merged.
    """
    b, n, _ = metric.shape
    r = min(int(r), max_merge(n, num_protected))
    k_a, k_b = (num_protected + 1) // 2, num_protected // 2
    with torch.no_grad():
        metric = metric.float()
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        a, bb = metric[:, ::2], metric[:, 1::2]
        scores = a @ bb.transpose(-1, -2)  # (B, Na, Nb) cosine similarities
        if mask is not None:
            real_a, real_b = mask[:, ::2, None], mask[:, None, 1::2]
            pad_scores = torch.where(
                real_a, torch.full_like(scores, _REAL_TO_PAD),
                torch.where(real_b, torch.full_like(scores, _PAD_TO_REAL), torch.full_like(scores, _PAD_TO_PAD)),
            )
            scores = torch.where(real_a & real_b, scores, pad_scores)
        scores[:, :k_a, :] = -math.inf
        scores[:, :, :k_b] = -math.inf
        node_max, node_idx = scores.max(dim=-1)  # (B, Na): best B for each A
        edge_order = node_max.argsort(dim=-1, descending=True, stable=True)  # (B, Na)
        src_idx = edge_order[:, :r]
        unm_idx = edge_order[:, r:].sort(dim=-1).values
        dst_idx = node_idx.gather(1, src_idx)
    order = _output_order(a.shape[1], bb.shape[1], r, num_protected, metric.device)
    return MergePlan(n, r, unm_idx, src_idx, dst_idx, order)


def merge_weighted(
    plan: MergePlan, x: torch.Tensor, size: torch.Tensor, padded: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average: x (B, N, C), size (B, N) -> merged x (B, N - r, C), summed size (B, N - r).
    A group made only of padding (size 0) keeps its destination's value. `padded=False` promises every size is
    >= 1 (no padding anywhere), which skips that fallback: one gather/scatter pass instead of three."""
    s = size.to(x.dtype)[..., None]  # (B, N, 1)
    merged = plan.merge(torch.cat([x * s, s], dim=-1))  # numerator and denominator in one pass: (B, N - r, C + 1)
    num, den = merged[..., :-1], merged[..., -1:]
    if padded:
        # No branch on tensor values (exportable): groups of padding only keep their destination's value.
        out = torch.where(den > 0, num / den.clamp_min(torch.finfo(x.dtype).tiny), plan.merge(x, reduce="keep"))
    else:
        out = num / den
    return out, plan.merge(size)


def initial_source(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """(B, N) real-token mask -> (B, N, N) source matrix: each real token holds itself, padding holds nothing."""
    n = mask.shape[1]
    return torch.eye(n, dtype=dtype, device=mask.device).expand(mask.shape[0], n, n) * mask[:, :, None].to(dtype)


def size_bias(size: torch.Tensor, dtype: torch.dtype, proportional: bool = True) -> torch.Tensor:
    """Additive attention bias (B, 1, 1, N) for SDPA's float `attn_mask`: log(size) for real tokens (0 without
    proportional attention) and the dtype's minimum for padding (size 0). A token of size s then weighs as s copies."""
    real = size > 0
    bias = size.clamp_min(1e-6).log() if proportional else torch.zeros_like(size)
    bias = torch.where(real, bias, torch.full_like(bias, torch.finfo(dtype).min))
    bias = torch.where(real.any(dim=-1, keepdim=True), bias, torch.zeros_like(bias))  # an all-padding row: no NaN
    return bias.to(dtype)[:, None, None, :]


@dataclass
class MergeState:
    """Token sizes (B, N) and, when tracked, sources (B, N, N_in): which input tokens each current token holds.
    `padded=False` (known from the caller, e.g. no attention mask came in) lets merging skip the padding logic."""

    size: torch.Tensor
    source: torch.Tensor | None = None
    padded: bool = True

    @classmethod
    def start(cls, mask: torch.Tensor, track_source: bool = False, padded: bool = True) -> "MergeState":
        return cls(mask.float(), initial_source(mask) if track_source else None, padded)

    @property
    def mask(self) -> torch.Tensor:
        return self.size > 0


def merge_step(
    x: torch.Tensor, metric: torch.Tensor, r: int, state: MergeState, num_protected: int = 0
) -> tuple[torch.Tensor, MergeState]:
    """One ToMe step: plan on `metric`, size-weighted merge of `x`, sizes and sources updated."""
    if r <= 0:
        return x, state
    plan = bipartite_soft_matching(metric, r, state.mask if state.padded else None, num_protected)
    x, size = merge_weighted(plan, x, state.size, state.padded)
    source = None if state.source is None else plan.merge(state.source)
    return x, MergeState(size, source, state.padded)


def head_mean(keys: torch.Tensor, num_heads: int | None) -> torch.Tensor:
    """(B, N, H*D) keys -> (B, N, D) averaged over heads (ToMe's metric); unchanged without a head count."""
    if not num_heads:
        return keys
    b, n, _ = keys.shape
    return keys.reshape(b, n, num_heads, -1).mean(dim=2)


# ------------------------------------------------------------------------------ patching ViT-style encoders
class EncoderLayerContext:
    """Per-call state handed to patched encoder layers through the ``layer_context`` keyword argument (vision
    models forward their ``**kwargs`` to every layer). Subclasses act between attention and MLP."""

    def wants(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` must run decomposed (otherwise its own forward runs unchanged)."""
        return False

    def attention_mask(self, layer_idx: int, attention_mask, hidden_states: torch.Tensor):
        return attention_mask

    def after_attention(self, layer_idx: int, hidden_states: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        return hidden_states


# Submodule names of pre-norm encoder layers: (norm before attention, attention, norm before MLP, MLP).
_LAYER_LAYOUTS = (
    ("layer_norm1", "self_attn", "layer_norm2", "mlp"),  # CLIP, SigLIP, BLIP, Idefics, ...
    ("layernorm_before", "attention", "layernorm_after", "mlp"),  # ViT, DeiT
)
_KEY_NAMES = ("k_proj", "key")
_PATCH_ATTR = "_encoder_layer_patch"


def _layout(layer: nn.Module) -> tuple | None:
    for names in _LAYER_LAYOUTS:
        if all(isinstance(getattr(layer, name, None), nn.Module) for name in names):
            return names
    return None


def find_encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of pre-norm encoder layers inside a vision model (exactly one must exist)."""
    found = [
        m for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and all(_layout(layer) is not None for layer in m)
    ]
    if len(found) != 1:
        raise ValueError(
            f"Expected one list of pre-norm encoder layers in {type(model).__name__}, found {len(found)}; pass the "
            "vision tower itself (e.g. CLIPVisionModel, SiglipVisionModel, ViTModel, or clip_model.vision_model)."
        )
    return found[0]


class _LayerPatch:
    """What a patched layer needs to run decomposed: its submodule names, index, heads and captured keys."""

    def __init__(self, layer: nn.Module, index: int):
        self.index = index
        self.norm1, self.attn, self.norm2, self.mlp = _layout(layer)
        attn = getattr(layer, self.attn)
        self.num_heads = next(
            (getattr(attn, n) for n in ("num_heads", "num_attention_heads") if isinstance(getattr(attn, n, None), int)),
            None,
        )
        self.dropout = getattr(layer, "dropout", None) if isinstance(getattr(layer, "dropout", None), nn.Module) else None
        self.capture = False
        self.keys = None
        key_proj = next((getattr(attn, n) for n in _KEY_NAMES if isinstance(getattr(attn, n, None), nn.Module)), None)
        self.hook = None if key_proj is None else key_proj.register_forward_hook(self._store_keys)

    def _store_keys(self, module, args, output):
        if self.capture:
            self.keys = output

    def run(self, layer, hidden_states, attention_mask, context: EncoderLayerContext, kwargs):
        drop = self.dropout if self.dropout is not None else (lambda t: t)
        mask = context.attention_mask(self.index, attention_mask, hidden_states)
        residual = hidden_states
        h = getattr(layer, self.norm1)(hidden_states)
        self.capture, self.keys = True, None
        try:
            h = getattr(layer, self.attn)(h, attention_mask=mask, **kwargs)[0]
        finally:
            self.capture = False
        keys, self.keys = self.keys, None
        hidden_states = drop(h) + residual
        hidden_states = context.after_attention(self.index, hidden_states, head_mean(keys, self.num_heads) if keys is not None else None)
        residual = hidden_states
        h = drop(getattr(layer, self.mlp)(getattr(layer, self.norm2)(hidden_states)))
        return h + residual


def _patched_forward(self, hidden_states, attention_mask=None, *args, layer_context=None, **kwargs):
    patch = self.__dict__[_PATCH_ATTR]
    if layer_context is None or not layer_context.wants(patch.index):
        return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)
    return patch.run(self, hidden_states, attention_mask, layer_context, kwargs)


def patch_encoder_layers(vision_model: nn.Module) -> nn.ModuleList:
    """Let every encoder layer of `vision_model` take a `layer_context` keyword (idempotent). The layers keep their
    class, parameters and hooks (the instance's `forward` is replaced); without a context they run unchanged."""
    layers = find_encoder_layers(vision_model)
    for idx, layer in enumerate(layers):
        if _PATCH_ATTR not in layer.__dict__:
            layer.__dict__[_PATCH_ATTR] = _LayerPatch(layer, idx)
            layer.forward = types.MethodType(_patched_forward, layer)
    return layers


def unpatch_encoder_layers(vision_model: nn.Module) -> None:
    for layer in find_encoder_layers(vision_model):
        patch = layer.__dict__.pop(_PATCH_ATTR, None)
        if patch is not None:
            if patch.hook is not None:
                patch.hook.remove()
            del layer.forward


def _key_mask(attention_mask: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """(B, N) real keys from a 2D mask or a 4D bool / additive mask of a bidirectional encoder."""
    if attention_mask.dim() == 2:
        return attention_mask.bool()
    row = attention_mask[:, 0, 0, :]
    return row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2


@dataclass
class TokenMergeContext(EncoderLayerContext):
    """Per-call ToMe state for a patched vision encoder: r per layer, protected tokens, sizes and sources.

    After the call, `state` holds the output sizes (B, N_out) and, with `track_source`, the (B, N_out, N_in) 0/1
    source matrix. Layer inputs are remembered so that gradient-checkpointing recomputation merges the same way.
    """

    r: list[int] = field(default_factory=list)
    num_protected: int = 1
    proportional_attention: bool = True
    track_source: bool = False
    state: MergeState | None = None
    _inputs: dict = field(default_factory=dict, repr=False)
    _unpadded: bool = field(default=True, repr=False)

    def _r(self, layer_idx: int) -> int:
        return self.r[layer_idx] if layer_idx < len(self.r) else 0

    def wants(self, layer_idx: int) -> bool:
        return self._r(layer_idx) > 0 or self.state is not None or layer_idx in self._inputs

    def attention_mask(self, layer_idx, attention_mask, hidden_states):
        if layer_idx not in self._inputs:
            state = self.state
            if state is None:  # first decomposed layer: real tokens from the incoming mask (or all real)
                b, n = hidden_states.shape[:2]
                mask = (
                    _key_mask(attention_mask, hidden_states) if attention_mask is not None
                    else torch.ones(b, n, dtype=torch.bool, device=hidden_states.device)
                )
                self._unpadded = attention_mask is None
                state = MergeState.start(mask, self.track_source, padded=not self._unpadded)
            self._inputs[layer_idx] = (state, self.state is None)
        state, first = self._inputs[layer_idx]
        # Known without reading tensor values (exportable): with no incoming padding every token stays real, and
        # before the first merge every size is 1, so there is nothing to add: keep the fast unmasked path.
        if attention_mask is None and self._unpadded and (first or not self.proportional_attention):
            return None
        return size_bias(state.size, hidden_states.dtype, self.proportional_attention)

    def after_attention(self, layer_idx, hidden_states, keys):
        state = self._inputs[layer_idx][0]
        metric = keys if keys is not None else hidden_states
        hidden_states, self.state = merge_step(hidden_states, metric, self._r(layer_idx), state, self.num_protected)
        return hidden_states


def has_cls_token(vision_model: nn.Module) -> bool:
    """CLIP/ViT-style embeddings carry a class token (`class_embedding` / `cls_token`); SigLIP's do not."""
    return any(hasattr(m, "class_embedding") or hasattr(m, "cls_token") for m in vision_model.modules())


def _inject_context(module, args, kwargs):
    if kwargs.get("layer_context") is None:
        cfg = module._token_merging
        kwargs["layer_context"] = TokenMergeContext(
            r=resolve_r(module.tome_r, cfg["num_layers"]),
            num_protected=cfg["num_protected"],
            proportional_attention=cfg["proportional_attention"],
            track_source=cfg["track_source"],
        )
    module._token_merging["last_context"] = kwargs["layer_context"]
    return args, kwargs


def apply_token_merging(
    vision_model: nn.Module,
    r: "int | Sequence[int] | MergeSchedule" = 0,
    schedule: MergeSchedule | None = None,
    protect_cls: bool | None = None,
    proportional_attention: bool = True,
    track_source: bool = False,
) -> nn.Module:
    """Merge tokens inside the encoder layers of a transformers vision model, after attention and before the MLP.

    `r` (or `schedule`) is stored as the plain attribute ``vision_model.tome_r`` and read at every forward, so a
    training callback can change it (``tome_r`` = an int, or ``tome_r.progress`` of a `MergeSchedule`).
    `protect_cls`: keep the first token unmerged (default: when the model has a class token).
    Sizes and sources of the last call: ``token_merge_state(vision_model)``. The output has fewer tokens.
    """
    if proportional_attention and str(getattr(getattr(vision_model, "config", None), "_attn_implementation", "")).startswith("flash"):
        raise ValueError("Proportional attention adds a float bias, which flash attention does not take; use sdpa.")
    layers = patch_encoder_layers(vision_model)
    if protect_cls is None:
        protect_cls = has_cls_token(vision_model)
    vision_model.tome_r = schedule if schedule is not None else r
    if getattr(vision_model, "_token_merging", None) is None:
        handle = vision_model.register_forward_pre_hook(_inject_context, with_kwargs=True)
    else:
        handle = vision_model._token_merging["hook"]
    vision_model._token_merging = {
        "num_layers": len(layers),
        "num_protected": int(protect_cls),
        "proportional_attention": proportional_attention,
        "track_source": track_source,
        "hook": handle,
        "last_context": None,
    }
    return vision_model


def token_merge_state(vision_model: nn.Module) -> MergeState | None:
    """Sizes (and sources) of the tokens output by the last forward of a model patched by `apply_token_merging`."""
    info = getattr(vision_model, "_token_merging", None)
    context = None if info is None else info["last_context"]
    return None if context is None else context.state


def remove_token_merging(vision_model: nn.Module) -> nn.Module:
    """Undo `apply_token_merging`: the layers run their own forward again."""
    info = vision_model.__dict__.pop("_token_merging", None)
    if info is not None:
        info["hook"].remove()
    vision_model.__dict__.pop("tome_r", None)
    unpatch_encoder_layers(vision_model)
    return vision_model


def token_counts(num_tokens: int, r_per_layer: Sequence[int], num_protected: int = 0) -> list[int]:
    """Tokens after each layer when layer i merges r_i (clamped as `bipartite_soft_matching` does)."""
    counts = []
    for r in r_per_layer:
        num_tokens -= min(r, max_merge(num_tokens, num_protected))
        counts.append(num_tokens)
    return counts


__all__ = [
    "EncoderLayerContext",
    "MergePlan",
    "MergeSchedule",
    "MergeState",
    "TokenMergeContext",
    "apply_token_merging",
    "bipartite_soft_matching",
    "find_encoder_layers",
    "has_cls_token",
    "head_mean",
    "initial_source",
    "linear_r",
    "max_merge",
    "merge_step",
    "merge_weighted",
    "patch_encoder_layers",
    "remove_token_merging",
    "resolve_r",
    "size_bias",
    "token_counts",
    "token_merge_state",
    "unpatch_encoder_layers",
]
