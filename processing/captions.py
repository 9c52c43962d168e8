"""Several captions per image (COCO style: a list of strings per row): one drawn per training sample and epoch,
all of them as references at evaluation.

    one_caption_per_sample(data, seed)  training data whose `text` holds lists -> one caption per sample, drawn
                                        from a generator seeded by (seed, epoch, index); other data unchanged
    caption_references(captions)        -> one list of reference captions per sample (captioning metrics)
    retrieval_targets(captions)         -> distinct texts + per image the indices of all its captions
"""

from collections.abc import Sequence

import numpy as np
from datasets import IterableDataset, LargeList, List, Value
from torch.utils.data import Dataset


def caption_list(value) -> list[str]:
    """The non-empty captions of one row's text value (a string or a list of strings)."""
    values = [value] if isinstance(value, str) else list(value or [])
    return [v for v in values if isinstance(v, str) and v.strip()]


def draw_caption(value, seed: int, epoch: int, index: int):
    """One caption of `value`, the same for the same (seed, epoch, index). A string is returned as it is; a list
    without a usable caption gives None (the collator then reports the sample's missing text)."""
    if isinstance(value, str) or value is None:
        return value
    captions = caption_list(value)
    if not captions:
        return None
    # numpy's SeedSequence mixes the three integers; Python's hash() of a tuple would differ between processes.
    rng = np.random.default_rng([seed, epoch, index])
    return captions[int(rng.integers(len(captions)))]


class CaptionChoice(Dataset):
    """A map-style view of `dataset` whose `column` holds one caption per row: for rows with a list of captions,
    the one drawn for (seed, epoch, index). `set_epoch` (called by accelerate's data loader and by
    `DatasetEpochCallback`) moves to another draw; column names and features read through to `dataset`."""

    def __init__(self, dataset, column: str = "text", seed: int = 0):
        self.dataset, self.column, self.seed, self.epoch = dataset, column, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _choose(self, row: dict, index: int) -> dict:
        row = dict(row)
        row[self.column] = draw_caption(row.get(self.column), self.seed, self.epoch, int(index))
        return row

    def __getitem__(self, index: int) -> dict:
        return self._choose(self.dataset[int(index)], index)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Batched fetch (the DataLoader uses it when present) through the wrapped dataset's own."""
        fetch = getattr(self.dataset, "__getitems__", None)
        rows = fetch(list(indices)) if fetch is not None else [self.dataset[int(i)] for i in indices]
        if isinstance(rows, dict):  # a columnar batch
            rows = [{k: v[j] for k, v in rows.items()} for j in range(len(indices))]
        return [self._choose(row, i) for row, i in zip(rows, indices)]

    def __getattr__(self, name):  # column_names, features, ... of the wrapped dataset (never its dunders)
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _holds_lists(data, column: str) -> bool:
    names = getattr(data, "column_names", None)
    if names is not None and column not in names:
        return False
    feature = (getattr(data, "features", None) or {}).get(column)
    if feature is not None:
        return isinstance(feature, (List, LargeList, list))
    first = next(iter(data), None)  # features unknown (some streamed formats): look at a value
    return first is not None and isinstance(first.get(column), (list, tuple))


def one_caption_per_sample(data, seed: int = 0, column: str = "text"):
    """Training data with one caption per sample: `CaptionChoice` for a map-style dataset whose `column` holds
    lists; for a streamed (`IterableDataset`) one, a lazy map drawing by (seed, position in the stream); data
    whose column holds strings comes back unchanged."""
    if not _holds_lists(data, column):
        return data
    if isinstance(data, IterableDataset):
        features = None
        if data.features is not None:  # a lazy map forgets the schema unless given the new one
            features = data.features.copy()
            features[column] = Value("string")
        return data.map(lambda row, i: {column: draw_caption(row[column], seed, 0, i)}, with_indices=True,
                        features=features)
    return CaptionChoice(data, column, seed)


def caption_references(captions: Sequence) -> list[list[str]]:
    """One list of references per sample, from strings or lists of strings (a sample without a usable caption
    keeps one empty reference, which no prediction matches)."""
    return [caption_list(c) or [""] for c in captions]


def retrieval_targets(captions: Sequence) -> tuple[list[str], list[list[int]]]:
    """(distinct texts, per image the indices of its captions among them): an image is retrieved by any of its
    captions, and a text shared by several images is a positive of each."""
    references = caption_references(captions)
    texts = sorted({c for refs in references for c in refs})
    index = {c: j for j, c in enumerate(texts)}
    return texts, [[index[c] for c in refs] for refs in references]
