"""Process-group aware pieces of the VLP objectives: gathering features (with or without gradients) for
contrastive / ITM / queue updates, and GRIT-VLP's grouped hard-negative batch sampler.

Everything is the identity on a single process (no process group), so the same code runs in tests and on one GPU.
"""

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler

from cosmo_vl.modeling.vlp_objectives import FeatureQueue

from .losses import gather_with_grad, world

# ------------------------------------------------------------------------------------------------ gathering


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, without gradients (momentum features for the queue,
    token ids for ITM negatives); identity on a single process. Every process must pass the same shape."""
    _, size = world()
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_features(tensor: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, int]:
    """(features of the global batch, offset of this process's rows in it). With gradients, uses
    `torch.distributed.nn.functional.all_gather` so every rank's slice gets the gradients of every rank's loss."""
    rank, size = world()
    gathered = gather_with_grad(tensor) if with_grad else gather_no_grad(tensor)
    if size > 1 and gathered.shape[0] != tensor.shape[0] * size:
        raise ValueError("gather_features needs the same local batch size on every process (use drop_last).")
    return gathered, rank * tensor.shape[0]


@torch.no_grad()
def gather_token_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the global batch: every process's rows, right-padded (id 0, mask 0) to the
    longest local length, since processes pad their batches to different lengths."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    _, size = world()
    if size == 1:
        return input_ids, mask
    length = torch.tensor([input_ids.shape[1]], device=input_ids.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    pad = int(length) - input_ids.shape[1]
    ids, mask = (torch.nn.functional.pad(t, (0, pad)) for t in (input_ids, mask))
    return gather_no_grad(ids), gather_no_grad(mask)


@torch.no_grad()
def enqueue_gathered(queue: FeatureQueue, features: torch.Tensor) -> None:
    """Enqueue the momentum features of the global batch, so every process keeps the same queue (ALBEF)."""
    queue.enqueue(gather_no_grad(features.detach()))


# ------------------------------------------------------------------------------------------------- sampling


def greedy_hard_negative_chain(image_embeds: torch.Tensor, text_embeds: torch.Tensor, start: int = 0) -> list[int]:
    """GRIT-VLP ordering of N pairs from their (normalised) embeddings: start at pair `start`; from the current
    pair's image go to the most similar unused text, from that pair's text to the most similar unused image, and so
    on, alternating, until every pair is used. Consecutive pairs are hard negatives of each other. O(N^2)."""
    n = image_embeds.shape[0]
    if n == 0:
        return []
    sim = image_embeds.float() @ text_embeds.float().t()  # (N, N): image i vs text j
    used = torch.zeros(n, dtype=torch.bool)
    order, current, from_image = [start], start, True
    used[start] = True
    for _ in range(n - 1):
        row = sim[current] if from_image else sim[:, current]  # image -> texts, or text -> images
        current = int(row.masked_fill(used, float("-inf")).argmax())
        used[current] = True
        order.append(current)
        from_image = not from_image
    return order


class GroupedHardNegativeSampler(Sampler[int]):
    """GRIT-VLP grouped mini-batch sampling as a torch `Sampler` of dataset indices.

    Epoch 0 (or whenever no embeddings were recorded) is a seeded random permutation. During an epoch the trainer
    records each batch's image/text embeddings (`record`, in the order the batches were drawn, or by index); the
    next epoch shuffles the pairs, splits them into search groups of `search_size`, orders each group with
    `greedy_hard_negative_chain`, and the concatenated chains are cut into consecutive batches of
    `batch_size * num_replicas` (process `rank` takes its `batch_size` slice of each). So each batch gathers hard
    negatives for the in-batch ITC/ITM losses nearly for free. Pairs never recorded are placed at random.

    Pass it to the DataLoader as `sampler=` with the same `batch_size` and no shuffling. Under accelerate /
    `Trainer` keep `num_replicas=1`: accelerate hands consecutive batches to consecutive processes, so each global
    batch is still one contiguous piece of a chain; there, record with explicit dataset `indices` (the running
    cursor of `record(indices=None)` assumes this process drew every batch). With a plain DataLoader per process,
    pass `num_replicas` and `rank` so the sampler shards each global batch itself.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        search_size: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1 or num_samples < 1:
            raise ValueError("num_samples and batch_size must be >= 1.")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.num_replicas, self.rank = num_replicas or 1, rank or 0
        self.global_batch = batch_size * self.num_replicas
        # GRIT-VLP searches within groups of many batches: large enough to find hard negatives, small enough to
        # keep the O(group^2) chain cheap.
        self.search_size = max(search_size or 100 * self.global_batch, self.global_batch)
        self.seed, self.drop_last = seed, drop_last
        self.epoch = 0
        self._image = self._text = None  # (N, D) embeddings recorded this epoch, by dataset index
        self._seen = torch.zeros(num_samples, dtype=torch.bool)
        self._cursor = 0
        self._order: list[int] = []  # global order of the running epoch
        self._resumed = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -------------------------------------------------------------------------------------------- recording
    @torch.no_grad()
    def record(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Store the embeddings (B, D) of a batch for the next epoch's ordering; `indices` are their dataset
        indices (default: the next `B` indices this process drew in the running epoch). Embeddings of every
        process are gathered, so call it on every process with the same batch size (with a process group)."""
        image_embeds = F.normalize(image_embeds.detach().float(), dim=-1)
        text_embeds = F.normalize(text_embeds.detach().float(), dim=-1)
        if indices is None:
            local = self._local_order()
            b = image_embeds.shape[0]
            indices = torch.as_tensor(local[self._cursor : self._cursor + b], dtype=torch.long)
            self._cursor += b
            if indices.numel() != b:
                raise ValueError("record() got more rows than this process drew this epoch; pass `indices`.")
        indices = gather_no_grad(indices.to(image_embeds.device).long()).cpu()
        image_embeds, text_embeds = gather_no_grad(image_embeds).cpu(), gather_no_grad(text_embeds).cpu()
        if self._image is None:
            self._image = torch.zeros(self.num_samples, image_embeds.shape[1])
            self._text = torch.zeros(self.num_samples, text_embeds.shape[1])
        self._image[indices], self._text[indices] = image_embeds, text_embeds
        self._seen[indices] = True

    # ------------------------------------------------------------------------------------------------ order
    def _global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        if self._image is None or not bool(self._seen.any()):
            return perm.tolist()
        seen = perm[self._seen[perm]]
        unseen = perm[~self._seen[perm]].tolist()
        order: list[int] = []
        for group in seen.split(self.search_size):
            chain = greedy_hard_negative_chain(self._image[group], self._text[group])
            order.extend(group[chain].tolist())
        return order + unseen

    def _local_order(self) -> list[int]:
        order = self._order
        out = []
        for start in range(0, len(order), self.global_batch):
            out.extend(order[start + self.rank * self.batch_size : start + (self.rank + 1) * self.batch_size])
        return out

    def _epoch_order(self) -> list[int]:
        order = self._global_order()
        if self.drop_last:
            order = order[: len(order) // self.global_batch * self.global_batch]
        elif len(order) % self.global_batch:  # pad the last global batch so every process gets full batches
            pad = self.global_batch - len(order) % self.global_batch
            order = order + (order * math.ceil(pad / len(order)))[:pad]
        return order

    def __iter__(self) -> Iterator[int]:
        if self._resumed:  # the interrupted epoch again: its order and what it had recorded come from the checkpoint
            self._resumed = False
            return iter(self._local_order())
        self._order = self._epoch_order()
        # What was recorded during the previous epoch ordered this one; start recording afresh.
        self._image = self._text = None
        self._seen.zero_()
        self._cursor = 0
        return iter(self._local_order())

    # ------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that resume the running epoch exactly: its order (made from the previous epoch's embeddings,
        which are gone) and the embeddings recorded so far (they order the next epoch)."""
        state = {"order": torch.tensor(self._order, dtype=torch.long), "seen": self._seen.clone(),
                 "epoch_cursor": torch.tensor([self.epoch, self._cursor], dtype=torch.long)}
        if self._image is not None:
            state.update(image=self._image.clone(), text=self._text.clone())
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()`; the next `__iter__` replays that epoch's order (the Trainer then skips the
        batches already trained) instead of computing a new one."""
        if state["seen"].numel() != self.num_samples:
            raise ValueError(f"The GRIT sampler state covers {state['seen'].numel()} samples, the dataset has "
                             f"{self.num_samples}: resume with the same training data.")
        self._order = state["order"].tolist()
        self._seen = state["seen"].clone()
        self.epoch, self._cursor = (int(v) for v in state["epoch_cursor"])
        self._image = state["image"].clone() if "image" in state else None
        self._text = state["text"].clone() if "text" in state else None
        self._resumed = bool(self._order)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.global_batch * self.batch_size
        return math.ceil(self.num_samples / self.global_batch) * self.batch_size


__all__ = [
    "GroupedHardNegativeSampler",
    "enqueue_gathered",
    "gather_features",
    "gather_token_rows",
    "gather_no_grad",
    "gather_with_grad",
    "greedy_hard_negative_chain",
]
