"""Streaming training data (`examples/pretrain.py --streaming`): each process reads its own part of the shards
lazily, in a reproducible shuffled order, and a run killed mid-epoch resumes at the exact next sample.

- Order: per data epoch `e`, datasets shuffles the shard order with seed (seed, e); `split_dataset_by_node` gives
  this process its shards (by example when the shard count is not a multiple of the world size); a block buffer
  then shuffles each `buffer_size` consecutive examples with a generator seeded by (seed, e, block). Epochs follow
  one another without end: `--max_steps` bounds the run.
- Resume: datasets' own shuffle buffer loses its content when a state is loaded (its documented limit), so the
  buffer here is a block whose start state is kept: a checkpoint holds, per process, the datasets state at the
  start of the block of the next unconsumed sample plus the offset in it. The position is counted from optimizer
  steps (steps x accumulation x batch size), so samples the dataloader prefetched are not counted as consumed.
- DDP: the stream is already this process's part, so `StreamingTrainerMixin` builds the training dataloader
  without accelerate's per-process split (`IterableDatasetShard`, `datasets.IterableDataset.shard`) and without
  `dispatch_batches` (which would read every batch on process 0).
"""

import json
import logging
import os
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from accelerate.data_loader import prepare_data_loader
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from cosmo_vl.processing.captions import draw_caption

logger = logging.getLogger(__name__)

STATE_FILE = "stream_state_{rank}.json"


class _BufferNote(logging.Filter):
    """Drops datasets' note that a loaded state lacks the shuffle buffer's content: its buffer holds one example
    here (the block buffer below restores exactly)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "shuffle buffer of a dataset without the buffer content" not in record.getMessage()


logging.getLogger("datasets.iterable_dataset").addFilter(_BufferNote())


@dataclass
class StreamPosition:
    """Where a stream resumes: block `block` of data epoch `epoch` starts at datasets state `start_state` (None:
    the epoch's start); `offset` samples of the shuffled block were consumed; `position` counts all samples."""

    epoch: int = 0
    block: int = 0
    start_state: dict | None = None
    offset: int = 0
    position: int = 0


@dataclass
class _Block:
    start: int  # position of the block's first sample
    length: int
    epoch: int
    block: int
    start_state: dict | None


class ResumableStream(torch.utils.data.IterableDataset):
    """Endless stream of one process's part of a `datasets.IterableDataset`, shuffled reproducibly and resumable at
    any consumed position (`state_at` / `load_state_dict`). Iterate it with `num_workers=0`: the positions of
    loader workers cannot be read back."""

    def __init__(self, data: IterableDataset, seed: int = 0, buffer_size: int = 1000, rank: int = 0,
                 world_size: int = 1, text_column: str = "text"):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.data, self.seed, self.buffer_size = data, int(seed), int(buffer_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.text_column = text_column
        self._resume = StreamPosition()
        self._blocks: list[_Block] = []

    def epoch_data(self, epoch: int) -> IterableDataset:
        """This process's part of data epoch `epoch`, shards in the (seed, epoch) order."""
        # buffer_size=1 keeps only datasets' seeded shard-order shuffle; max_buffer_input_shards=1 reads one shard at
        # a time (its multi-shard interleaving raises on close in datasets 5.2 when a stream stops mid-epoch).
        data = self.data.shuffle(seed=int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]),
                                 buffer_size=1, max_buffer_input_shards=1)
        return split_dataset_by_node(data, rank=self.rank, world_size=self.world_size) if self.world_size > 1 else data

    def _order(self, epoch: int, block: int, length: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, block]).permutation(length)

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("ResumableStream runs in the training process: use dataloader_num_workers=0.")
        start = self._resume
        epoch, block, state, offset, position = start.epoch, start.block, start.start_state, start.offset, start.position
        self._blocks = []
        while True:
            data = self.epoch_data(epoch)
            if state is not None:
                data.load_state_dict(state)
            examples, yielded = iter(data), block > 0 or offset > 0
            while True:
                items = list(islice(examples, self.buffer_size))
                if not items:
                    break
                self._blocks.append(_Block(position - offset, len(items), epoch, block, state))
                for index in self._order(epoch, block, len(items))[offset:]:
                    position += 1
                    yielded = True
                    yield self._one_caption(items[index], epoch, position)
                state, block, offset = data.state_dict(), block + 1, 0
            if not yielded:
                raise ValueError(f"process {self.rank} of {self.world_size} got no sample in data epoch {epoch}: the "
                                 f"dataset has {self.data.num_shards} shard(s) and fewer samples than processes?")
            epoch, block, state = epoch + 1, 0, None

    def _one_caption(self, example: dict, epoch: int, position: int) -> dict:
        """COCO-style caption lists: one caption per sample, drawn by (seed, epoch, position in the stream)."""
        if isinstance(example.get(self.text_column), list):
            example = {**example, self.text_column: draw_caption(example[self.text_column], self.seed, epoch, position)}
        return example

    def state_at(self, position: int) -> StreamPosition:
        """The resume point after `position` samples were consumed (at most what the iterator has yielded)."""
        if not self._blocks and position == self._resume.position:
            return self._resume
        for entry in self._blocks:
            if entry.start <= position <= entry.start + entry.length:
                # Earlier blocks are never asked for again: positions only grow.
                self._blocks = [b for b in self._blocks if b.start + b.length >= position]
                return StreamPosition(entry.epoch, entry.block, entry.start_state, position - entry.start, position)
        raise RuntimeError(f"stream position {position} is not among the buffered blocks "
                           f"{[(b.start, b.start + b.length) for b in self._blocks]}: more samples were counted as "
                           "consumed than the dataloader read (a batch size or accumulation change?)")

    def config(self) -> dict:
        return {"seed": self.seed, "buffer_size": self.buffer_size, "rank": self.rank, "world_size": self.world_size,
                "num_shards": self.data.num_shards}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a `save_state` record; the order settings must be those of the saved run."""
        saved = state.get("config", {})
        changed = {k: (saved.get(k), v) for k, v in self.config().items() if saved.get(k) != v}
        if changed:
            raise ValueError(f"the stream was saved with other settings {changed} (saved, now): resume with the same "
                             "--seed, --shuffle_buffer_size, number of processes and data shards")
        self._resume = StreamPosition(**state["position"])
        self._blocks = []

    def save_state(self, position: int) -> dict:
        return {"config": self.config(), "position": asdict(self.state_at(position))}


def consumed_samples(trainer) -> int:
    """Samples this process consumed in `trainer.state.global_step` optimizer steps (each micro-batch takes exactly
    `batch size` samples of an endless stream)."""
    return trainer.state.global_step * trainer.args.gradient_accumulation_steps * trainer._train_batch_size


class StreamingTrainerMixin:
    """Trainer side of a `ResumableStream` training dataset: a dataloader that keeps the per-process split, the stream
    position written per process into each checkpoint (`stream_state_<rank>.json`), and read back when resuming
    instead of skipping batches. Other datasets pass through unchanged."""

    def _stream(self) -> ResumableStream | None:
        return self.train_dataset if isinstance(self.train_dataset, ResumableStream) else None

    def get_train_dataloader(self):
        stream = self._stream()
        if stream is None:
            return super().get_train_dataloader()
        if self.args.dataloader_num_workers > 0:
            raise ValueError(
                "--streaming resumes exactly only with --dataloader_num_workers 0: the stream position inside loader "
                "workers cannot be read back (that needs torchdata's StatefulDataLoader, not installed here).")
        loader = torch.utils.data.DataLoader(
            stream, batch_size=self._train_batch_size, num_workers=0, pin_memory=self.args.dataloader_pin_memory,
            collate_fn=self._get_collator_with_removed_columns(self.data_collator, description="training"),
        )
        # num_processes=1: the stream is this process's part already; accelerate.prepare would split it again.
        return prepare_data_loader(loader, self.args.device, num_processes=1, process_index=0,
                                   put_on_device=self.accelerator.device_placement, dispatch_batches=False,
                                   non_blocking=self.accelerator.non_blocking)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        if self._stream() is not None:  # the stream restarts at its saved position
            return dataloader
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _save_checkpoint(self, model, trial) -> None:
        stream = self._stream()
        if stream is not None:
            folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            folder.mkdir(parents=True, exist_ok=True)
            state = stream.save_state(consumed_samples(self))
            (folder / STATE_FILE.format(rank=self.args.process_index)).write_text(json.dumps(state))
            # Every process's position is on disk before process 0 writes trainer_state.json (the "complete" mark).
            self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        stream = self._stream()
        if stream is not None and resume_from_checkpoint:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            path = Path(resume_from_checkpoint, STATE_FILE.format(rank=self.args.process_index))
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: {resume_from_checkpoint} was not written by a --streaming run with "
                    f"{self.args.world_size} process(es); the stream position cannot be restored.")
            stream.load_state_dict(json.loads(path.read_text()))
        return super().train(resume_from_checkpoint, *args, **kwargs)


# ------------------------------------------------------------------------------------------------- recipe data
def materialise(split: IterableDataset, max_samples: int) -> Dataset:
    """The first `max_samples` samples of a streamed split as an in-memory Dataset (for held-out evaluation)."""
    return Dataset.from_list(list(islice(split, max_samples)), features=split.features)


def load_streaming_data(args, training_args, names: list[str]):
    """`load_training_data` with `--streaming`: (ResumableStream of this process's part, {split: Dataset of at most
    --max_eval_samples held-out samples}, names)."""
    from cosmo_vl.processing import load_any

    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps: a stream has no length to count epochs from.")
    if len(names) > 1:
        raise ValueError("--streaming reads one dataset; mix the corpora into one set of shards beforehand.")
    if getattr(args, "model_type", "cosmo") == "blip2":
        raise ValueError("--streaming is available for --model_type cosmo and simvlg (blip2 trains in two stages).")
    columns = {"image_column": args.image_column, "text_column": args.text_column}
    data = load_any(names[0], streaming=True, **columns)
    train = data["train"]
    if args.max_train_samples:
        train = train.take(args.max_train_samples)
    if args.eval_dataset:
        held_out = load_any(args.eval_dataset, streaming=True, **columns)
        eval_splits = {"eval": held_out["test"] if "test" in held_out else held_out["train"]}
    else:
        eval_splits = {name: data[name] for name in ("test", "test_iid") if name in data}
    if not eval_splits and getattr(args, "final_evaluation", False):
        raise ValueError(f"{names[0]} has no test split to evaluate on: pass --eval_dataset (its test or train split "
                         "is used) or --final_evaluation false; a stream is not split into train and held-out parts.")
    eval_splits = {name: materialise(split, args.max_eval_samples) for name, split in eval_splits.items()}
    if getattr(training_args, "grit_sampler", False):
        logger.warning("--streaming: grit_sampler needs an indexable dataset; batches are drawn in stream order.")
        training_args.grit_sampler = False
    stream = ResumableStream(train, seed=training_args.seed, buffer_size=args.shuffle_buffer_size,
                             rank=training_args.process_index, world_size=training_args.world_size)
    return stream, eval_splits, names


__all__ = ["ResumableStream", "StreamPosition", "StreamingTrainerMixin", "load_streaming_data", "materialise"]
