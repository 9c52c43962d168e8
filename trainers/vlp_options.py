"""The shared VLP objectives as trainer options: the state the trainer owns and the pieces that do not depend on
the architecture.

`VLTrainingArguments` switches them on (`itm_loss_weight`, `momentum_distillation`, `grit_sampler`); `VLTrainer`
runs them on the batches that get the contrastive term, and a model's trainer supplies the two model-specific
parts (`CosmoTrainer` for CosMo): the fused representation of (image, text) pairs for ITM, and which trainable
parameters make up the contrastive path (the momentum encoder is an EMA of exactly those).

- `ObjectiveState`: what the trainer trains or keeps beside the model (ITM head, momentum parameters, feature
  queues). Its parameters join the optimizer as an extra group, their gradients are averaged over processes by the
  trainer, and the whole state is checkpointed as `vlp_objectives.safetensors` next to the model.
- `momentum_features`: the contrastive features of a batch computed with the momentum parameters swapped in
  (`torch.func.functional_call`, so frozen parameters are shared, not copied).
- `IndexedDataset` / `IndexedCollator`: carry each sample's dataset index into the batch (`dataset_index`) so the
  GRIT sampler records embeddings by index, whichever process drew the batch.
"""

import torch
from torch import nn
from torch.utils.data import Dataset

from cosmo_vl.modeling.vlp_objectives import FeatureQueue, ITMHead

CHECKPOINT_NAME = "vlp_objectives.safetensors"
SAMPLER_CHECKPOINT_NAME = "grit_sampler.safetensors"
INDEX_KEY = "dataset_index"


def _buffer_name(name: str) -> str:
    return name.replace(".", "__")


class ObjectiveState(nn.Module):
    """ITM head, momentum copies of the contrastive path's trainable parameters, and the momentum feature queues.

    Args:
        itm_hidden_size: width of the fused representation (None: no ITM head).
        momentum_parameters: {name: online parameter} to keep an EMA of (empty: no momentum encoder).
        queue_size / feature_dim: momentum feature queues (image and text), when both are set and > 0.
    """

    def __init__(self, itm_hidden_size: int | None = None, momentum_parameters: dict | None = None,
                 queue_size: int = 0, feature_dim: int | None = None):
        super().__init__()
        self.itm_head = ITMHead(itm_hidden_size) if itm_hidden_size else None
        self.momentum_names = list(momentum_parameters or {})
        self.momentum_params = nn.Module()
        for name, param in (momentum_parameters or {}).items():
            self.momentum_params.register_buffer(_buffer_name(name), param.detach().clone().float())
        self.image_queue = self.text_queue = None
        if queue_size and feature_dim:
            self.image_queue = FeatureQueue(queue_size, feature_dim)
            self.text_queue = FeatureQueue(queue_size, feature_dim)

    @property
    def has_momentum(self) -> bool:
        return bool(self.momentum_names)

    def momentum_dict(self) -> dict[str, torch.Tensor]:
        """{online parameter name: momentum tensor}."""
        return {name: getattr(self.momentum_params, _buffer_name(name)) for name in self.momentum_names}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [] if self.itm_head is None else list(self.itm_head.parameters())

    @torch.no_grad()
    def ema_update(self, online: dict[str, torch.Tensor], m: float) -> None:
        """`momentum <- m * momentum + (1 - m) * online` for every tracked parameter."""
        for name, target in self.momentum_dict().items():
            target.mul_(m).add_(online[name].detach().to(target.dtype), alpha=1.0 - m)


def momentum_features(model: nn.Module, params: dict[str, torch.Tensor], features_fn, inputs: dict):
    """`features_fn(model, inputs)` evaluated with `params` (name -> tensor, names as in `model.named_parameters()`)
    in place of the model's own, without gradients. The model's parameters are untouched."""

    class _Call(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            return features_fn(self.inner, batch)

    wrapper = _Call(model)
    overrides = {f"inner.{name}": value.to(dtype=dict(model.named_parameters())[name].dtype) for name, value in params.items()}
    with torch.no_grad():
        return torch.func.functional_call(wrapper, overrides, (inputs,), strict=False)


def last_token_states(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) -> (B, H): the state at each row's last real token (right or left padding)."""
    if attention_mask is None:
        return hidden_states[:, -1]
    positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
    last = (positions[None, :] * attention_mask.to(positions.dtype)).argmax(dim=1)  # (B,)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]


def text_fingerprints(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) token ids -> (B,) int64 hash of each row's real tokens, whatever the padding side or the padded
    length (rows of different processes compare): equal texts give equal fingerprints."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    position = (real.long().cumsum(dim=1) - 1).clamp_min(0)  # index among the row's real tokens
    # An odd 64-bit multiplier per position (splitmix-style mixing of the index); int64 products wrap around.
    mixed = (position + 1) * -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
    mixed = (mixed ^ (mixed >> 31)) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    terms = (input_ids.long() + 1) * (mixed | 1)
    return torch.where(real, terms, torch.zeros_like(terms)).sum(dim=1) + real.sum(dim=1)


def same_text_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   pool_ids: torch.Tensor | None = None, pool_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) bool: True where row i and pool row j hold the same text (padding ignored; the pool defaults to the
    rows themselves, e.g. the global batch when gathered); such pairs are positives for ITM."""
    local = text_fingerprints(input_ids, attention_mask)
    pool = local if pool_ids is None else text_fingerprints(pool_ids, pool_mask)
    return local[:, None] == pool[None, :]


class IndexedDataset(Dataset):
    """A map-style dataset whose items (dicts) also carry their index under `dataset_index`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        if not isinstance(item, dict):
            raise TypeError(f"grit_sampler needs dict samples, got {type(item).__name__}.")
        return {**item, INDEX_KEY: int(index)}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Batched fetch (DataLoader uses it when present), through the wrapped dataset's own when it has one."""
        fetch = getattr(self.dataset, "__getitems__", None)
        rows = fetch(list(indices)) if fetch is not None else [self.dataset[i] for i in indices]
        if isinstance(rows, dict):  # a columnar batch
            rows = [{k: v[j] for k, v in rows.items()} for j in range(len(indices))]
        return [{**row, INDEX_KEY: int(i)} for row, i in zip(rows, indices)]

    def __getattr__(self, name):  # column_names, features, ... of the wrapped dataset (never its dunders)
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class IndexedCollator:
    """Wraps a collator: strips `dataset_index` from the samples and adds it to the batch as a (B,) tensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]):
        indices = [e.get(INDEX_KEY, -1) for e in examples]
        batch = self.collator([{k: v for k, v in e.items() if k != INDEX_KEY} for e in examples])
        batch[INDEX_KEY] = torch.tensor(indices, dtype=torch.long)
        return batch

    def __getattr__(self, name):  # stats, processor, ... of the wrapped collator
        if name == "collator" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.collator, name)


__all__ = [
    "CHECKPOINT_NAME",
    "SAMPLER_CHECKPOINT_NAME",
    "INDEX_KEY",
    "IndexedCollator",
    "IndexedDataset",
    "ObjectiveState",
    "last_token_states",
    "momentum_features",
    "same_text_mask",
    "text_fingerprints",
]
