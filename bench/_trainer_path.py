"""The real training path: `CosmoTrainer` under accelerate mixed precision on an in-memory pair dataset, timed per
optimizer step by a callback; and the largest batch that fits on the device through that path."""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import time

import torch
from torch.utils.data import Dataset, default_collate
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from _step_timing import (
    StepCounter, check_variant, make_batch, median, speed_switches, sync, tf32_state, variant_name,
)


class PairDataset(Dataset):
    """`size` pre-tokenized image-caption pairs: the rows of one synthetic batch of tensors, repeated. With
    `default_collate` (which stacks tensors) the data loader does no work worth timing."""

    def __init__(self, rows: dict, size: int):
        self.rows, self.size = rows, size
        self.n = rows["input_ids"].shape[0]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return {key: value[i % self.n] for key, value in self.rows.items()}


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step, from `on_step_begin` to `on_step_end` with the device synchronised at both
    ends: forward, backward, gradient clipping, optimizer and scheduler step, zero_grad (the Trainer fetches the
    batch before `on_step_begin`). Step number `flop_step` runs under FlopCounterMode instead and is not timed."""

    def __init__(self, model, device, flop_step: int | None = None):
        self.model, self.device, self.flop_step = model, torch.device(device), flop_step
        self.times, self.flops, self._counter, self._start = [], None, None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.flop_step:
            self._counter = StepCounter(self.model).__enter__()
            return
        sync(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops, self._counter = self._counter.summary(), None
            return
        sync(self.device)
        self.times.append(time.perf_counter() - self._start)


def training_arguments(output_dir: str, device, batch: int, steps: int, variant: dict,
                       gradient_checkpointing: bool = False):
    """`CosmoTrainingArguments` of one measured run: bf16 mixed precision for precision "autocast", the variant's
    optimizer and TF32 switch, no logging, saving or evaluation."""
    from cosmo_vl.trainers import CosmoTrainingArguments

    cuda = torch.device(device).type == "cuda"
    # transformers 5.25 renamed gradient checkpointing to activation checkpointing (the old names warn)
    fields = {f.name for f in dataclasses.fields(CosmoTrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    checkpointing = {key: gradient_checkpointing,
                     f"{key}_kwargs": {"use_reentrant": False} if gradient_checkpointing else None}
    return CosmoTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
        lr_scheduler_type="constant", bf16=variant["precision"] == "autocast", optim=variant["optim"],
        tf32=variant["tf32"] if cuda else None, use_cpu=not cuda, report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0, **checkpointing,
    )


def checkpointing_on(model) -> bool:
    if hasattr(type(model), "is_activation_checkpointing"):  # transformers >= 5.25
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def release(trainer, model) -> None:
    """Undo what a finished (or failed) run left on the shared model and free the optimizer states."""
    if trainer is not None:
        trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # removes the autocast wrapper
        model.__dict__.pop("forward", None)  # the instance-level forward it leaves: back to the class's own
        trainer.accelerator.free_memory()
        trainer.optimizer = trainer.lr_scheduler = None
    if checkpointing_on(model):
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trainer_steps(model, rows: dict, device, variant: dict, warmup: int, iters: int, count_flops: bool = True,
                  gradient_checkpointing: bool = False, after=None) -> dict:
    """Train `model` with `CosmoTrainer` for warmup + iters (+ 1 FLOP-counted) optimizer steps on batches of `rows`
    (CPU tensors, one batch); return the median of the timed steps. `after` may measure more while the
    Trainer (and its optimizer) still exists; `after(trainer, result)`'s dict is merged into the result."""
    from cosmo_vl.trainers import CosmoTrainer

    variant = check_variant(variant)
    if variant["precision"] == "bf16_weights":
        raise ValueError("The Trainer path keeps fp32 master weights: use precision 'autocast' (bf16=True) or 'fp32'.")
    device = torch.device(device)
    batch = rows["input_ids"].shape[0]
    steps = warmup + iters + int(count_flops)
    timer = StepTimer(model, device, flop_step=steps - 1 if count_flops else None)
    trainer = None
    with tempfile.TemporaryDirectory() as tmp, speed_switches(device, variant["tf32"], variant["sdpa"]):
        try:
            args = training_arguments(tmp, device, batch, steps, variant, gradient_checkpointing)
            trainer = CosmoTrainer(model=model, args=args, train_dataset=PairDataset(rows, batch * steps),
                                   data_collator=default_collate, callbacks=[timer])
            trainer.remove_callback(PrinterCallback)  # no metrics printout at the end of each run
            out = trainer.train()
            times = timer.times[warmup:]
            result = {"path": "trainer", "variant": variant_name(variant), "switches": variant,
                      "gradient_checkpointing": gradient_checkpointing,
                      "tf32_state": tf32_state() if device.type == "cuda" else None,
                      "optimizer": type(trainer.optimizer.optimizer).__name__,
                      "optimizer_fused": bool(trainer.optimizer.optimizer.defaults.get("fused")),
                      "mixed_precision": trainer.accelerator.mixed_precision,
                      "step_time_s": median(times), "step_times_s": times, "train_loss": out.training_loss}
            if timer.flops is not None:
                result["train_step_flops"] = timer.flops["total"]
                result["flops"] = timer.flops
            if after is not None:
                result.update(after(trainer, result))
            return result
        finally:
            release(trainer, model)


# ----------------------------------------------------------------------------------------- largest batch
def largest_batch(attempt, start: int = 1, max_batch: int | None = None, max_s: float = 60.0, on_failure=None) -> dict:
    """The largest batch for which `attempt(batch)` returns without torch.OutOfMemoryError: double from `start`
    until a batch fails, then bisect between the largest fit and the smallest failure. No new attempt starts once
    `max_s` seconds have passed (the largest fit so far is kept, `stopped` says why the search ended).
    `on_failure()` runs after each failure, outside the exception (whose traceback holds the failed tensors)."""
    begin = time.perf_counter()
    tries, fit, failed, batch, stopped = [], None, None, max(start, 1), None
    while stopped is None:
        if time.perf_counter() - begin > max_s:
            stopped = "time limit"
            break
        info = None
        try:
            info = attempt(batch)
        except torch.OutOfMemoryError:
            pass
        if info is None:
            tries.append({"batch": batch, "fits": False})
            failed = batch if failed is None else min(failed, batch)
            if on_failure is not None:
                on_failure()
        else:
            tries.append({"batch": batch, "fits": True, **info})
            fit = tries[-1] if fit is None or batch > fit["batch"] else fit
        low = fit["batch"] if fit is not None else 0
        if failed is None:
            if max_batch is not None and batch >= max_batch:
                stopped = "max_batch"
            else:
                batch = batch * 2 if max_batch is None else min(batch * 2, max_batch)
        elif failed - low <= 1:
            stopped = "converged"
        else:
            batch = (low + failed) // 2
    return {"batch": None if fit is None else fit["batch"], "fit": fit, "smallest_failure": failed,
            "stopped": stopped, "search_s": time.perf_counter() - begin, "tries": tries}


def trainer_memory_search(model, config, image: int, seq_len: int, device, variant: dict,
                          gradient_checkpointing: bool, start: int, max_s: float, max_batch: int | None = None,
                          steps: int = 2) -> dict:
    """Largest per-device batch at `seq_len` tokens through the Trainer path, `steps` optimizer steps per try (two:
    the optimizer states then exist while the second step's activations do), with its peak allocated memory."""
    device = torch.device(device)
    cuda = device.type == "cuda"

    def attempt(batch: int) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        row = trainer_steps(model, make_batch(config, batch, seq_len, image), device, variant, warmup=steps - 1,
                            iters=1, count_flops=False, gradient_checkpointing=gradient_checkpointing)
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                "step_time_s": row["step_time_s"]}

    def on_failure() -> None:
        release(None, model)

    base = torch.cuda.memory_allocated() if cuda else None
    out = largest_batch(attempt, start=start, max_batch=max_batch, max_s=max_s, on_failure=on_failure)
    out.update({"seq_len": seq_len, "steps_per_try": steps, "gradient_checkpointing": gradient_checkpointing,
                "variant": variant_name(variant),
                "allocated_before_bytes": base, "max_s": max_s,
                "peak_allocated_bytes": None if out["fit"] is None else out["fit"]["peak_allocated_bytes"],
                "device_total_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None})
    return out
