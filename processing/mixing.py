"""Round-robin mixing of several datasets at batch granularity, so every batch holds one kind of sample.

CosMo trains on image-caption pairs, interleaved documents and videos in alternation: a batch never mixes them
(the contrastive term applies to pair batches only, and sequence lengths differ by kind). `RoundRobinBatches`
plans, deterministically from a seed, which source fills each batch (smooth weighted round-robin, so the
share of each source matches its ratio at every point of training) and which of its samples, cycling through
a fresh permutation of the source per epoch. Use it with a sequential sampler (`train_sampling_strategy=
"sequential"`): resuming from a checkpoint then replays the same order.
"""

import random
from collections.abc import Sequence

from torch.utils.data import Dataset


class RoundRobinBatches(Dataset):
    """A map-style dataset whose consecutive blocks of `batch_size * group` samples come from one source.

    Args:
        sources: the datasets to mix (any indexable with `len`), e.g. pairs, interleaved documents, videos.
        ratios: relative share of batches per source.
        batch_size: per-device batch size; `group` = number of processes (all of them get the same kind at
            each step, as a gathered contrastive loss needs).
        num_batches: length of the plan in batches (default: enough to see the largest source once).
    """

    def __init__(self, sources: Sequence, ratios: Sequence[float], batch_size: int, num_batches: int | None = None,
                 group: int = 1, seed: int = 0, names: Sequence[str] | None = None):
        if len(sources) != len(ratios) or not sources:
            raise ValueError(f"{len(sources)} sources but {len(ratios)} ratios; give one ratio per source.")
        if any(r <= 0 for r in ratios):
            raise ValueError(f"ratios must be positive, got {list(ratios)}")
        if any(len(s) == 0 for s in sources):
            raise ValueError("a source is empty")
        self.sources, self.names = list(sources), list(names or [f"source{i}" for i in range(len(sources))])
        self.block = batch_size * group
        total = sum(ratios)
        weights = [r / total for r in ratios]
        if num_batches is None:
            num_batches = max(len(s) * total / r for s, r in zip(sources, ratios)) // batch_size
        rng = random.Random(seed)
        orders = [self._order(len(s), rng) for s in sources]
        positions = [0] * len(sources)
        credit = [0.0] * len(sources)
        self.plan: list[tuple[int, int]] = []
        self.kinds: list[int] = []
        for _ in range(max(1, int(num_batches)) // group or 1):
            for i, w in enumerate(weights):
                credit[i] += w
            chosen = max(range(len(sources)), key=lambda i: credit[i])
            credit[chosen] -= 1.0
            self.kinds.append(chosen)
            for _ in range(self.block):
                if positions[chosen] == len(orders[chosen]):
                    orders[chosen].extend(self._order(len(sources[chosen]), rng))
                self.plan.append((chosen, orders[chosen][positions[chosen]]))
                positions[chosen] += 1

    @staticmethod
    def _order(n: int, rng: random.Random) -> list[int]:
        order = list(range(n))
        rng.shuffle(order)
        return order

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict:
        source, row = self.plan[index]
        return dict(self.sources[source][row])

    def source_of(self, index: int) -> str:
        return self.names[self.plan[index][0]]
