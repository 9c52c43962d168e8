"""Vision-language pretraining objectives shared by the family (ALBEF / BLIP-2 / GRIT-VLP style).

Everything here works on one process's tensors; gathering across processes lives with the trainers (`objectives`).

- `LearnableTemperature`: contrastive temperature (init 0.07) clamped to [0.001, 0.5] whenever it is read.
- `sample_hard_negatives` / `hardest_negatives`: one in-batch negative per row, drawn from softmax(similarity)
  with the positives excluded (ALBEF, BLIP-2), or the most similar non-positive (GRIT-VLP top-1).
- `ITMHead` + `image_text_matching_loss`: binary matched / not-matched head on a fused [CLS] state.
- `ema_update`, `momentum_copy`: momentum (EMA) encoders; `FeatureQueue`: ring buffer of past momentum features.
- `distillation_targets`, `alpha_ramp`, `soft_cross_entropy`, `momentum_contrastive_loss`: ITC against the
  momentum batch + queue with targets y = alpha * softmax(s_momentum) + (1 - alpha) * onehot.
"""

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------- temperature


class LearnableTemperature(nn.Module):
    """Learnable softmax temperature, clamped in place to ``[min_value, max_value]`` each time it is read (ALBEF
    clamps the parameter itself, so a step that overshoots does not leave it stuck outside the range)."""

    def __init__(self, init_value: float = 0.07, min_value: float = 0.001, max_value: float = 0.5):
        super().__init__()
        if not min_value <= init_value <= max_value:
            raise ValueError(f"temperature init {init_value} is outside [{min_value}, {max_value}].")
        self.value = nn.Parameter(torch.tensor(float(init_value)))
        self.min_value, self.max_value = min_value, max_value

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            self.value.clamp_(self.min_value, self.max_value)
        return self.value


# ------------------------------------------------------------------------------------------- hard negatives


def _positive_mask(similarity: torch.Tensor, positive_mask: torch.Tensor | None, offset: int) -> torch.Tensor:
    """(N, M) bool, True where column j is a positive of row i; default: column ``offset + i``."""
    if positive_mask is not None:
        if positive_mask.shape != similarity.shape:
            raise ValueError(f"positive_mask {tuple(positive_mask.shape)} != similarity {tuple(similarity.shape)}.")
        return positive_mask.bool()
    n, m = similarity.shape
    rows = torch.arange(n, device=similarity.device)
    mask = torch.zeros(n, m, dtype=torch.bool, device=similarity.device)
    mask[rows, rows + offset] = True
    return mask


def positives_from_ids(row_ids: torch.Tensor, column_ids: torch.Tensor) -> torch.Tensor:
    """(N, M) positive mask from sample ids: several captions of one image are all positives of it."""
    return row_ids.view(-1, 1) == column_ids.view(1, -1)


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor,
    positive_mask: torch.Tensor | None = None,
    offset: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For each row of ``similarity`` (N, M) (logits, i.e. already divided by the temperature), one column index
    drawn from softmax(row) with the positives given zero weight, so a positive is never drawn. Returns (N,) long.

    ``positive_mask`` (N, M) marks positives (default: column ``offset + i`` for row ``i``, where ``offset`` is this
    process's first index when the columns were gathered from every process)."""
    positives = _positive_mask(similarity, positive_mask, offset)
    if bool(positives.all(dim=1).any()):
        raise ValueError("A row has no negative column: hard-negative sampling needs at least two distinct samples.")
    logits = similarity.float().masked_fill(positives, float("-inf"))
    weights = torch.softmax(logits, dim=1)  # exactly 0 on positives
    # A row whose negatives all underflow to 0 (or NaN from extreme logits) falls back to uniform over negatives.
    bad = ~torch.isfinite(weights).all(dim=1) | (weights.sum(dim=1) <= 0)
    if bool(bad.any()):
        weights[bad] = (~positives[bad]).float()
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


@torch.no_grad()
def hardest_negatives(similarity: torch.Tensor, positive_mask: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Top-1 variant (GRIT-VLP): the most similar non-positive column of each row. Returns (N,) long."""
    positives = _positive_mask(similarity, positive_mask, offset)
    if bool(positives.all(dim=1).any()):
        raise ValueError("A row has no negative column: hard-negative mining needs at least two distinct samples.")
    return similarity.float().masked_fill(positives, float("-inf")).argmax(dim=1)


def itm_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    mode: str = "sample",
    positive_mask: torch.Tensor | None = None,
    offset: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negatives for image-text matching: (negative image index for each text, negative text index for each
    image), from ``sim_t2i`` (N, M) (local texts vs pool images) and ``sim_i2t`` (N, M) (local images vs pool
    texts). ``mode``: "sample" (from the similarity softmax, ALBEF/BLIP-2) or "hardest" (top-1, GRIT-VLP).
    ``positive_mask`` (N, M): pool pair j is a positive of local pair i (same image id, same caption); the relation
    is symmetric, so it serves both directions, also when the pool was gathered from every process."""
    if mode == "sample":
        neg_images = sample_hard_negatives(sim_t2i, positive_mask, offset, generator)
        neg_texts = sample_hard_negatives(sim_i2t, positive_mask, offset, generator)
    elif mode == "hardest":
        neg_images = hardest_negatives(sim_t2i, positive_mask, offset)
        neg_texts = hardest_negatives(sim_i2t, positive_mask, offset)
    else:
        raise ValueError(f"mode must be 'sample' or 'hardest', got {mode!r}.")
    return neg_images, neg_texts


# ---------------------------------------------------------------------------------------------------- ITM


class ITMHead(nn.Module):
    """Binary image-text matching head on a fused representation (e.g. the multimodal [CLS]): logits (.., 2),
    index 1 = matched."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, 2)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(fused)


def image_text_matching_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the matched pairs (label 1) and the negative pairs (label 0); logits (N, 2) / (M, 2)."""
    logits = torch.cat([positive_logits, negative_logits], dim=0)
    labels = torch.cat(
        [
            torch.ones(positive_logits.shape[0], dtype=torch.long, device=logits.device),
            torch.zeros(negative_logits.shape[0], dtype=torch.long, device=logits.device),
        ]
    )
    return F.cross_entropy(logits.float(), labels)


# ------------------------------------------------------------------------------------------------ momentum


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to serve as its momentum encoder."""
    momentum = copy.deepcopy(module)
    for param in momentum.parameters():
        param.requires_grad_(False)
    return momentum


@torch.no_grad()
def ema_update(online: nn.Module | Iterable[nn.Module], momentum_model: nn.Module | Iterable[nn.Module], m: float = 0.995):
    """``p_momentum <- m * p_momentum + (1 - m) * p_online`` for every parameter (buffers are copied). Accepts two
    modules with the same structure, or two sequences of such modules paired in order."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}.")
    onlines = [online] if isinstance(online, nn.Module) else list(online)
    momenta = [momentum_model] if isinstance(momentum_model, nn.Module) else list(momentum_model)
    if len(onlines) != len(momenta):
        raise ValueError("ema_update: the online and momentum module lists differ in length.")
    for src, dst in zip(onlines, momenta):
        src_params, dst_params = list(src.parameters()), list(dst.parameters())
        if len(src_params) != len(dst_params):
            raise ValueError("ema_update: online and momentum modules have different parameters.")
        for p, p_m in zip(src_params, dst_params):
            p_m.mul_(m).add_(p.detach().to(p_m.dtype), alpha=1.0 - m)
        for b, b_m in zip(src.buffers(), dst.buffers()):
            b_m.copy_(b)


class FeatureQueue(nn.Module):
    """FIFO ring buffer of ``size`` feature rows (ALBEF/MoCo queue, 65,536 by default); enqueuing past the end
    wraps around and overwrites the oldest rows. ``features`` returns the rows written so far (at most ``size``).
    Buffers are persistent, so the queue is checkpointed with the model."""

    def __init__(self, size: int = 65536, dim: int | tuple[int, ...] = 256, dtype: torch.dtype = torch.float32):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}.")
        shape = (dim,) if isinstance(dim, int) else tuple(dim)
        self.size = size
        self.register_buffer("queue", torch.zeros(size, *shape, dtype=dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor) -> None:
        """Write (B, *dim) rows at the pointer (detached), wrapping around; with B > size only the last size rows."""
        features = features.detach().to(self.queue.dtype)
        if features.shape[1:] != self.queue.shape[1:]:
            raise ValueError(f"queue rows are {tuple(self.queue.shape[1:])}, got {tuple(features.shape[1:])}.")
        if features.shape[0] > self.size:
            features = features[-self.size :]
        n, ptr = features.shape[0], int(self.ptr)
        first = min(n, self.size - ptr)
        self.queue[ptr : ptr + first] = features[:first]
        if n > first:  # wrap around
            self.queue[: n - first] = features[first:]
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    @torch.no_grad()
    def dequeue(self, n: int) -> torch.Tensor:
        """Remove and return the ``n`` oldest rows (oldest first)."""
        n = min(n, int(self.filled))
        start = (int(self.ptr) - int(self.filled)) % self.size
        idx = (torch.arange(n, device=self.queue.device) + start) % self.size
        self.filled.fill_(int(self.filled) - n)
        return self.queue[idx].clone()

    @property
    def features(self) -> torch.Tensor:
        """The stored rows, oldest first: (filled, *dim)."""
        filled = int(self.filled)
        start = (int(self.ptr) - filled) % self.size
        idx = (torch.arange(filled, device=self.queue.device) + start) % self.size
        return self.queue[idx]

    def __len__(self) -> int:
        return int(self.filled)


# --------------------------------------------------------------------------------------------- distillation


def alpha_ramp(step: int, ramp_steps: int, alpha: float = 0.4) -> float:
    """ALBEF's distillation weight: linear from 0 to ``alpha`` over the first ``ramp_steps`` (one epoch)."""
    if ramp_steps <= 0:
        return alpha
    return alpha * min(1.0, step / ramp_steps)


def distillation_targets(
    momentum_logits: torch.Tensor, alpha: float, positive_mask: torch.Tensor | None = None, offset: int = 0
) -> torch.Tensor:
    """Soft targets ``alpha * softmax(momentum_logits) + (1 - alpha) * onehot`` (rows sum to 1). With several
    positives per row (``positive_mask``), the hard part spreads evenly over them."""
    positives = _positive_mask(momentum_logits, positive_mask, offset).float()
    hard = positives / positives.sum(dim=1, keepdim=True).clamp(min=1.0)
    return alpha * torch.softmax(momentum_logits.detach().float(), dim=1) + (1.0 - alpha) * hard


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j targets_ij * log_softmax(logits)_ij``."""
    return -(F.log_softmax(logits.float(), dim=1) * targets).sum(dim=1).mean()


def momentum_contrastive_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    image_feat_m: torch.Tensor,
    text_feat_m: torch.Tensor,
    temperature: torch.Tensor | float,
    alpha: float = 0.4,
    image_queue: torch.Tensor | None = None,
    text_queue: torch.Tensor | None = None,
) -> torch.Tensor:
    """ALBEF ITC with momentum distillation. Normalised (B, D) online and momentum features; the columns are the
    momentum features of the batch followed by the queue (Q, D). Targets mix the momentum model's softmax with the
    one-hot positives (column ``i`` for row ``i``); ``alpha = 0`` gives plain InfoNCE against batch + queue."""
    image_all = image_feat_m if image_queue is None else torch.cat([image_feat_m, image_queue.to(image_feat_m)], dim=0)
    text_all = text_feat_m if text_queue is None else torch.cat([text_feat_m, text_queue.to(text_feat_m)], dim=0)
    image_all, text_all = image_all.detach(), text_all.detach()
    sim_i2t = image_feat @ text_all.t() / temperature  # (B, B + Q)
    sim_t2i = text_feat @ image_all.t() / temperature
    with torch.no_grad():
        targets_i2t = distillation_targets(image_feat_m @ text_all.t() / temperature, alpha)
        targets_t2i = distillation_targets(text_feat_m @ image_all.t() / temperature, alpha)
    return (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2


__all__ = [
    "FeatureQueue",
    "ITMHead",
    "LearnableTemperature",
    "alpha_ramp",
    "distillation_targets",
    "ema_update",
    "hardest_negatives",
    "image_text_matching_loss",
    "itm_negatives",
    "momentum_contrastive_loss",
    "momentum_copy",
    "positives_from_ids",
    "sample_hard_negatives",
    "soft_cross_entropy",
]
