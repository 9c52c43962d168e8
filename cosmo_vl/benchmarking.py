"""Input-pipeline timing: samples/s of a collator behind a DataLoader, and a Trainer callback that splits each
optimizer step into the wait for its batch and the step itself.

    from cosmo_vl.benchmarking import StepTimer, loader_throughput
    loader_throughput(train_data, collator, batch_size=64, num_workers=2)   # {"samples_per_s": ..., ...}
    timer = StepTimer(); trainer.add_callback(timer); trainer.train(); timer.summary()

`StepTimer` reads the Trainer's own loop: the Trainer fetches a step's batches (dataloader, collator, device copy,
label-token count) between the previous step's `on_step_end` and this step's `on_step_begin`, and runs forward,
backward, clipping, the optimizer and scheduler between `on_step_begin` and `on_step_end`. Gaps that also held
logging, saving or evaluation, or an epoch start (a new sampler order, new workers), are kept apart.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import TrainerCallback


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _batch_size(batch) -> int:
    """Rows of a collated batch: the first dimension of its first tensor."""
    values = batch.values() if hasattr(batch, "values") else batch
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("The collated batch holds no tensor with a batch dimension; cannot count its samples.")


def loader_throughput(dataset, collate_fn, batch_size: int, num_workers: int = 0, num_batches: int = 20,
                      warmup_batches: int = 2, pin_memory: bool = False, persistent_workers: bool = False,
                      seed: int = 0) -> dict:
    """Samples/s of `dataset` -> `collate_fn` through a shuffled `DataLoader` with `num_workers` workers, as the
    Trainer builds it (row fetch, decoding, preprocessing, padding, and the copy back from the workers).

    The first `warmup_batches` batches (worker start-up included) are timed apart as `warmup_s`; the rate is over
    the `num_batches` after them. Samples are drawn in reshuffled passes when the dataset is shorter."""
    if num_batches < 1 or batch_size < 1 or warmup_batches < 0 or num_workers < 0:
        raise ValueError(f"num_batches and batch_size must be >= 1, warmup_batches and num_workers >= 0; got "
                         f"{num_batches}, {batch_size}, {warmup_batches}, {num_workers}.")
    total = (warmup_batches + num_batches) * batch_size
    sampler = RandomSampler(dataset, num_samples=total, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                        num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=persistent_workers and num_workers > 0)
    start = time.perf_counter()
    iterator = iter(loader)
    for _ in range(warmup_batches):
        next(iterator)
    warm = time.perf_counter()
    samples = sum(_batch_size(next(iterator)) for _ in range(num_batches))
    end = time.perf_counter()
    del iterator  # stops the workers
    return {"num_workers": num_workers, "batch_size": batch_size, "batches": num_batches, "samples": samples,
            "warmup_s": warm - start, "seconds": end - warm, "samples_per_s": samples / (end - warm),
            "ms_per_batch": 1e3 * (end - warm) / num_batches}


class StepTimer(TrainerCallback):
    """Per optimizer step: `data_wait_s` (previous step's end -> this step's begin: next batch from the dataloader,
    device copy, token count) and `compute_s` (forward, backward, clipping, optimizer, scheduler, zero_grad).
    With `parts`, `compute_s` is split further by hooks on the model and the optimizer: `forward_s` (the model's
    forward calls), `optimizer_s` (the optimizer's `step`), `backward_s` (from the last forward's end to the
    optimizer step: loss terms, backward, gradient clipping) and `host_other_s` (the rest: device copy of the
    batch, scheduler, zero_grad, callbacks). With gradient accumulation a step holds several forwards.

    Args:
        synchronize: wait for the GPU at both ends of a step, so its queued kernels count as the step's compute
            rather than as the next wait (this removes the overlap of data loading with GPU work it measures).
        skip_first: steps left out of the summary (first-call allocations, lazy initialisation).
        parts: split `compute_s` with forward hooks on the model and step hooks on the optimizer.
    """

    def __init__(self, synchronize: bool = False, skip_first: int = 1, parts: bool = False):
        self.synchronize, self.skip_first, self.parts = synchronize, skip_first, parts
        self.steps: list[dict] = []
        self._begin = self._last_end = None
        self._events: set[str] = set()
        self._marks: dict[str, float] = {}
        self._handles: list = []
        self.first_step_begin: float | None = None  # perf_counter() at the first step's begin

    def _mark(self, name: str, accumulate: bool = False):
        def hook(*_args, **_kwargs):
            now = self._now()
            if accumulate:  # forward: sum of the calls of this step
                self._marks["forward_s"] = self._marks.get("forward_s", 0.0) + now - self._marks["forward_begin"]
            self._marks[name] = now
        return hook

    def _attach(self, model, optimizer) -> None:
        if model is not None:
            self._handles.append(model.register_forward_pre_hook(self._mark("forward_begin")))
            self._handles.append(model.register_forward_hook(self._mark("forward_end", accumulate=True)))
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if inner is not None and hasattr(inner, "register_step_pre_hook"):
            self._handles.append(inner.register_step_pre_hook(self._mark("optimizer_begin")))
            self._handles.append(inner.register_step_post_hook(self._mark("optimizer_end")))

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _now(self) -> float:
        if self.synchronize:
            _synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps, self._events = [], {"train_begin"}
        if self.parts and not self._handles:
            self._attach(kwargs.get("model"), kwargs.get("optimizer"))
        self._last_end = self._now()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._events.add("epoch_begin")

    def on_log(self, args, state, control, **kwargs):
        self._events.add("log")

    def on_save(self, args, state, control, **kwargs):
        self._events.add("save")

    def on_evaluate(self, args, state, control, **kwargs):
        self._events.add("evaluate")

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin, self._marks = self._now(), {}
        if self.first_step_begin is None:
            self.first_step_begin = self._begin

    def on_step_end(self, args, state, control, **kwargs):
        end = self._now()
        row = {"step": state.global_step, "data_wait_s": self._begin - self._last_end, "compute_s": end - self._begin,
               "events": sorted(self._events)}
        marks = self._marks
        if self.parts and {"forward_s", "forward_end", "optimizer_begin", "optimizer_end"} <= set(marks):
            row["forward_s"] = marks["forward_s"]
            row["optimizer_s"] = marks["optimizer_end"] - marks["optimizer_begin"]
            row["backward_s"] = marks["optimizer_begin"] - marks["forward_end"]
            row["host_other_s"] = row["compute_s"] - row["forward_s"] - row["optimizer_s"] - row["backward_s"]
        self.steps.append(row)
        self._last_end, self._events = end, set()

    def summary(self) -> dict:
        """Medians and totals over the timed steps; `data_wait_s` over the plain steps (no log, save, evaluation
        or epoch start in their gap), `interrupted_wait_s` the total of the other gaps."""
        timed = self.steps[self.skip_first:]
        if not timed:
            return {"steps": 0}
        plain = [s for s in timed if not s["events"]]
        waits = [s["data_wait_s"] for s in plain] or [float("nan")]
        compute = [s["compute_s"] for s in timed]
        wall = sum(s["data_wait_s"] + s["compute_s"] for s in timed)
        return {
            "steps": len(timed), "plain_steps": len(plain), "wall_s": wall, "steps_per_s": len(timed) / wall,
            "data_wait_s": statistics.median(waits), "mean_data_wait_s": statistics.fmean(waits),
            "compute_s": statistics.median(compute), "mean_compute_s": statistics.fmean(compute),
            "data_wait_fraction": sum(s["data_wait_s"] for s in plain) / max(wall, 1e-12),
            "interrupted_wait_s": sum(s["data_wait_s"] for s in timed if s["events"]),
            "synchronized": self.synchronize,
            **{key: statistics.median(s[key] for s in timed if key in s) for key in
               ("forward_s", "backward_s", "optimizer_s", "host_other_s") if any(key in s for s in timed)},
        }


__all__ = ["StepTimer", "loader_throughput"]
