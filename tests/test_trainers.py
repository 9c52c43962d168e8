"""Trainer: exact gradient accumulation, DDP contrastive gathering, logged components, schedules."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from datasets import Dataset
from transformers import TrainerCallback

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.modeling.contrastive import contrastive_logits, symmetric_contrastive_loss
from cosmo_vl.trainers import (
    AttributeScheduleCallback,
    CosmoTrainer,
    CosmoTrainingArguments,
    batch_type,
    distributed_contrastive_loss,
    gather_with_grad,
    schedule_value,
)

from tiny_configs import MEDIA_ID, PAD_ID, tiny_cosmo_config


def _samples(n: int, media_per_sample: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 8 + i % 4
        ids = torch.randint(5, 90, (length,), generator=g)
        ids[0] = 1
        ids[[1, 5][:media_per_sample]] = MEDIA_ID
        labels = ids.clone()
        labels[ids == MEDIA_ID] = -100
        labels[0] = -100
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist(),
                     "pixel_values": torch.randn(media_per_sample, 1, 3, 16, 16, generator=g).tolist()})
    return Dataset.from_list(rows)


def _collate(examples):
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), PAD_ID)
    labels = torch.full((len(examples), length), -100)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    pixels = torch.tensor([e["pixel_values"] for e in examples])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}


class GradCapture(TrainerCallback):
    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}


def _one_step_grads(tmp_path, batch_size, accumulation, media_per_sample, weight=None):
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_gate"):
                param.fill_(0.5)
    args = CosmoTrainingArguments(
        output_dir=str(tmp_path / f"b{batch_size}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1e-3, max_grad_norm=0.0,
        report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, contrastive_loss_weight=weight,
        dataloader_drop_last=True,
    )
    capture = GradCapture(model)
    trainer = CosmoTrainer(model=model, args=args, train_dataset=_samples(8, media_per_sample),
                           data_collator=_collate, callbacks=[capture])
    trainer.train()
    return capture.grads, trainer


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    full, _ = _one_step_grads(tmp_path, batch_size=8, accumulation=1, media_per_sample=2)
    accumulated, trainer = _one_step_grads(tmp_path, batch_size=2, accumulation=4, media_per_sample=2)
    assert full.keys() == accumulated.keys() and len(full) > 10
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-4, atol=1e-5)
    logged = [entry for entry in trainer.state.log_history if "lm_loss" in entry]
    assert logged and abs(logged[0]["lm_loss"] - logged[0]["loss"]) < 1e-4  # interleaved: LM term only


def test_batch_level_contrastive_term_is_divided_by_accumulation(tmp_path):
    # Pair batches with only the contrastive term: 4 micro-batches of 2 give the mean of the micro-batch losses.
    grads, trainer = _one_step_grads(tmp_path, batch_size=2, accumulation=4, media_per_sample=1, weight=1.0)
    entry = next(e for e in trainer.state.log_history if "contrastive_loss" in e)
    assert 0.0 < entry["contrastive_loss"] < 2.0  # ln(2) is the chance level for 2 samples
    assert abs(entry["loss"] - (entry["lm_loss"] + entry["contrastive_loss"])) < 1e-4


def test_batch_type_detection():
    assert batch_type({"pixel_values": torch.zeros(2, 1, 1, 3, 4, 4), "media_mask": torch.ones(2, 1, dtype=torch.bool)}) == "pair"
    assert batch_type({"pixel_values": torch.zeros(2, 2, 1, 3, 4, 4), "media_mask": torch.ones(2, 2, dtype=torch.bool)}) == "interleaved"
    assert batch_type({"pixel_values": torch.zeros(2, 1, 4, 3, 4, 4), "media_mask": torch.ones(2, 1, dtype=torch.bool)}) == "video"
    assert batch_type({"input_ids": torch.zeros(2, 3)}) == "interleaved"


def test_gather_helper_with_a_faked_collective(monkeypatch):
    import cosmo_vl.trainers.losses as losses

    local = torch.randn(2, 4, requires_grad=True)
    other = torch.randn(2, 4)
    monkeypatch.setattr(losses, "world", lambda: (1, 2))
    monkeypatch.setattr(losses.dist_fn, "all_gather", lambda t: [other, t])
    gathered = gather_with_grad(local)
    assert torch.equal(gathered[2:], local) and torch.equal(gathered[:2], other)
    gathered.sum().backward()
    assert torch.equal(local.grad, torch.ones_like(local))
    # rank 1 rows are matched with columns 2..3 of the gathered batch
    text = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    image = torch.nn.functional.normalize(local.detach(), dim=-1)
    loss, logits = distributed_contrastive_loss(image, text, torch.tensor(3.0))
    assert logits.shape == (2, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, inputs, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config())
    half = {k: v[rank * 2 : rank * 2 + 2] for k, v in inputs.items()}
    out = model(**half, return_loss=False)
    loss, _ = distributed_contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for g in grads.values():  # what DDP does: average the gradients of the ranks
        dist.all_reduce(g)
        g /= world_size
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / world_size, "grads": grads}, os.path.join(result_dir, "ddp.pt"))
    dist.destroy_process_group()


def test_two_process_contrastive_loss_and_gradients_equal_one_process(tmp_path):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (4, 9), generator=g)
    ids[:, 1] = MEDIA_ID
    inputs = {"input_ids": ids, "pixel_values": torch.randn(4, 1, 1, 3, 16, 16, generator=g),
              "attention_mask": torch.ones_like(ids)}
    mp.start_processes(_ddp_worker, args=(2, _free_port(), inputs, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ddp = torch.load(tmp_path / "ddp.pt")
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config())
    out = model(**inputs, return_loss=False)
    logits_i, logits_t = contrastive_logits(out.image_embeds, out.text_embeds, out.logit_scale)
    loss = symmetric_contrastive_loss(logits_i, logits_t)
    loss.backward()
    assert abs(float(ddp["loss"]) - float(loss.detach())) < 1e-5
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6)


def test_schedules():
    assert schedule_value("linear", 0.5, 0.0, 10.0) == 5.0
    assert schedule_value("cosine", 0.0, 1.0, 0.0) == 1.0 and abs(schedule_value("cosine", 1.0, 1.0, 0.0)) < 1e-12
    assert schedule_value("step", 0.6, 8, 0, steps=[(0.5, 4), (0.9, 2)]) == 4
    with pytest.raises(ValueError):
        schedule_value("exp", 0.1, 0, 1)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Module()
            self.inner.r = 0

    class State:
        global_step, max_steps = 25, 100

    holder = Holder()
    AttributeScheduleCallback("inner.r", "linear", 16, 0, as_int=True).on_step_begin(None, State(), None, model=holder)
    assert holder.inner.r == 12
