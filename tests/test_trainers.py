"""VLTrainer / CosmoTrainer: exact gradient accumulation, loss composition and logging, batch types, schedules."""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback
from transformers.utils import ModelOutput

import cosmo_vl.trainers.losses as losses
import cosmo_vl.trainers.vl_trainer as vl_trainer
from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.modeling.contrastive import contrastive_logits, symmetric_contrastive_loss
from cosmo_vl.trainers import (
    AttributeScheduleCallback,
    CosmoTrainer,
    CosmoTrainingArguments,
    LossMeter,
    LossWeightWarmupCallback,
    MomentumScheduleCallback,
    VLTrainer,
    VLTrainingArguments,
    batch_type,
    distributed_contrastive_loss,
    gather_with_grad,
    register_loss_component,
    schedule_value,
)

from tiny_configs import MEDIA_ID, collate_rows, tiny_cosmo_config


# ------------------------------------------------------------------------------------------------ fixtures
def _samples(n: int, media: int = 1, frames: int = 1, seed: int = 0) -> list[dict]:
    """`n` samples of varying length (so micro-batches hold different label-token counts)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(5, 90, (7 + 2 * (i % 3) + i % 2,), generator=g)
        ids[0] = 1
        ids[[1, 5][:media]] = MEDIA_ID
        labels = ids.clone()
        labels[(ids == MEDIA_ID) | (torch.arange(len(ids)) == 0)] = -100
        pixel_values = torch.randn(media, frames, 3, 16, 16, generator=g)
        rows.append({"input_ids": ids, "labels": labels, "pixel_values": pixel_values})
    return rows




def _model() -> CosmoForConditionalGeneration:
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config())
    with torch.no_grad():  # open the zero-initialised gates so the cross-attention gets gradients too
        for name, param in model.named_parameters():
            if name.endswith("_gate"):
                param.fill_(0.5)
    return model


def _args(tmp_path, **overrides) -> CosmoTrainingArguments:
    kwargs = dict(output_dir=str(tmp_path), max_steps=1, learning_rate=1e-3, max_grad_norm=0.0, report_to=[],
                  save_strategy="no", use_cpu=True, logging_steps=1, train_sampling_strategy="sequential",
                  disable_tqdm=True)
    kwargs.update(overrides)
    return CosmoTrainingArguments(**kwargs)


class GradCapture(TrainerCallback):
    """Gradients as the optimizer is about to see them (after all micro-steps of the first step)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _train_one_step(tmp_path, data, batch_size, accumulation, **overrides):
    capture = GradCapture()
    args = _args(tmp_path / f"b{batch_size}x{accumulation}", per_device_train_batch_size=batch_size,
                 gradient_accumulation_steps=accumulation, **overrides)
    trainer = CosmoTrainer(model=_model(), args=args, train_dataset=data, data_collator=collate_rows, callbacks=[capture])
    trainer.train()
    return capture.grads, trainer


def _assert_same_grads(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys() and len(expected) > 10
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------------------ gradient accumulation
def test_token_loss_accumulation_equals_the_large_batch(tmp_path):
    data = _samples(8, media=2)  # interleaved: LM term only
    assert len({int((s["labels"] != -100).sum()) for s in data}) > 1  # micro-batches differ in token count
    full, _ = _train_one_step(tmp_path, data, batch_size=8, accumulation=1)
    accumulated, trainer = _train_one_step(tmp_path, data, batch_size=2, accumulation=4)
    assert trainer.model_accepts_loss_kwargs and trainer.loss_is_scaled_for_ga
    _assert_same_grads(accumulated, full)
    log = next(e for e in trainer.state.log_history if "loss" in e)
    assert "contrastive_loss" not in log and "interleaved_lm_loss" in log
    assert log["lm_loss"] == pytest.approx(log["loss"], abs=1e-5)  # token mean over the 4 micro-batches


def test_batch_level_term_is_divided_by_accumulation(tmp_path):
    # Pair batches, contrastive term only: the step's gradient is the mean over micro-batches of the gradient of
    # each micro-batch's contrastive loss (in-batch negatives are per micro-batch).
    data = _samples(8, media=1)
    grads, trainer = _train_one_step(tmp_path, data, batch_size=2, accumulation=4,
                                     loss_weights={"lm": 0.0}, contrastive_loss_weight=1.0)
    model, micro_losses = _model(), []
    for i in range(4):
        out = model(**collate_rows(data[2 * i : 2 * i + 2]), return_loss=True)
        (out.contrastive_loss / 4).backward()
        micro_losses.append(float(out.contrastive_loss.detach()))
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    _assert_same_grads({n: g for n, g in grads.items() if n in expected}, expected)
    assert all(float(g.abs().max()) == 0 for n, g in grads.items() if n not in expected)  # LM weight 0
    log = next(e for e in trainer.state.log_history if "loss" in e)
    assert log["contrastive_loss"] == pytest.approx(sum(micro_losses) / 4, abs=1e-5)
    assert log["pair_contrastive_loss"] == pytest.approx(log["contrastive_loss"])
    assert log["loss"] == pytest.approx(log["contrastive_loss"], abs=1e-5)


# --------------------------------------------------------------------------------- composition and batches
def test_cosmo_trainer_weights_types_and_eval_logs(tmp_path):
    args = _args(tmp_path, pair_loss_weight=0.5, video_loss_weight=2.0, contrastive_loss_weight=0.25,
                 per_device_eval_batch_size=2)
    trainer = CosmoTrainer(model=_model(), args=args, data_collator=collate_rows)
    model = trainer.model.eval()
    pair = collate_rows(_samples(2, media=1))
    with torch.no_grad():
        out = model(**pair, return_loss=True)
        assert float(trainer.compute_loss(model, pair)) == pytest.approx(
            0.5 * (float(out.lm_loss) + 0.25 * float(out.contrastive_loss)), rel=1e-5)
        # the collator's `batch_type` wins over the layout: no contrastive term, interleaved weight 1
        loss, outputs = trainer.compute_loss(model, {**pair, "batch_type": "interleaved"}, return_outputs=True)
        assert outputs.contrastive_loss is None and float(loss) == pytest.approx(float(out.lm_loss), rel=1e-5)
        video = collate_rows(_samples(2, media=1, frames=3))
        loss, outputs = trainer.compute_loss(model, video, return_outputs=True)
        assert outputs.contrastive_loss is None and float(loss) == pytest.approx(2.0 * float(outputs.lm_loss), rel=1e-5)

    metrics = trainer.evaluate(eval_dataset=_samples(4, media=1))
    assert metrics["eval_loss"] == pytest.approx(
        0.5 * (metrics["eval_lm_loss"] + 0.25 * metrics["eval_contrastive_loss"]), rel=1e-5)
    assert metrics["eval_pair_lm_loss"] == pytest.approx(metrics["eval_lm_loss"])
    assert "eval_video_lm_loss" not in metrics and trainer.state.log_history[-1]["eval_lm_loss"] > 0


def test_gathered_contrastive_term_under_a_faked_process_group(monkeypatch, tmp_path):
    # Two processes where the other one holds the same batch: the trainer asks the model for embeddings only and
    # composes the loss against the gathered columns.
    monkeypatch.setattr(vl_trainer, "world", lambda: (0, 2))
    monkeypatch.setattr(losses, "world", lambda: (0, 2))
    monkeypatch.setattr(losses, "local_batch_sizes", lambda b, device: [b, b])
    monkeypatch.setattr(losses.dist_fn, "all_gather", lambda t: [t, t.detach()])
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, op=None: tensor)
    trainer = CosmoTrainer(model=_model(), args=_args(tmp_path, loss_weights={"lm": 0.0}), data_collator=collate_rows)
    model = trainer.model.train()
    batch = collate_rows(_samples(2, media=1))
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert outputs.contrastive_loss is None and outputs.image_embeds is not None
    expected, logits = distributed_contrastive_loss(outputs.image_embeds, outputs.text_embeds, outputs.logit_scale)
    assert logits.shape == (2, 4) and float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_batch_type_detection():
    def batch(b, m, f, frame_mask=None):
        return {"pixel_values": torch.zeros(b, m, f, 3, 4, 4), "media_mask": torch.ones(b, m, dtype=torch.bool),
                "frame_mask": frame_mask}

    assert batch_type(batch(2, 1, 1)) == "pair"
    assert batch_type({"pixel_values": torch.zeros(2, 3, 4, 4)}) == "pair"
    assert batch_type(batch(2, 2, 1)) == "interleaved"
    assert batch_type(batch(2, 1, 4)) == "video"
    assert batch_type(batch(2, 1, 4, frame_mask=torch.tensor([[[1, 0, 0, 0]], [[1, 0, 0, 0]]]).bool())) == "pair"
    assert batch_type({"input_ids": torch.zeros(2, 3)}) == "interleaved"
    mixed = {**batch(2, 2, 1), "media_mask": torch.tensor([[True, False], [True, True]])}
    assert batch_type(mixed) == "interleaved"


def test_training_arguments():
    args = VLTrainingArguments(output_dir="unused", loss_weights='{"contrastive": 0.5}', use_cpu=True, report_to=[])
    assert args.loss_weights == {"contrastive": 0.5} and not args.remove_unused_columns
    assert args.gather_contrastive and args.contrastive_on == "pairs"
    with pytest.raises(ValueError, match="contrastive_on"):
        VLTrainingArguments(output_dir="unused", contrastive_on="videos", use_cpu=True, report_to=[])
    assert CosmoTrainingArguments(output_dir="unused", use_cpu=True, report_to=[]).ddp_find_unused_parameters


@dataclass
class ToyOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    toy_loss: torch.FloatTensor | None = None


class ToyModel(nn.Module):
    """Another architecture with a component of its own: a batch-level `toy_loss`."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x, target=None):
        toy_loss = (self.linear(x).squeeze(-1) - target).pow(2).mean()
        return ToyOutput(loss=toy_loss, toy_loss=toy_loss)


def test_registered_component_is_weighted_scaled_and_logged(monkeypatch, tmp_path):
    with pytest.raises(ValueError):
        register_loss_component("toy_loss", "sample")
    monkeypatch.setitem(vl_trainer.LOSS_KINDS, "toy_loss", "batch")
    data = [{"x": torch.randn(4), "target": torch.randn(())} for _ in range(8)]
    args = VLTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                               gradient_accumulation_steps=2, loss_weights={"toy": 3.0}, report_to=[],
                               save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True)
    trainer = VLTrainer(model=ToyModel(), args=args, train_dataset=data)
    batch = {"x": torch.stack([d["x"] for d in data[:2]]), "target": torch.stack([d["target"] for d in data[:2]])}
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert float(loss.detach()) == pytest.approx(3.0 * float(outputs.toy_loss.detach()) / 2)  # weight, batch kind
    trainer.train()  # starts a fresh logging window
    log = next(e for e in trainer.state.log_history if "loss" in e)
    assert log["loss"] == pytest.approx(3.0 * log["toy_loss"], rel=1e-5)


def test_loss_meter_means_and_reset():
    meter = LossMeter()
    meter.add("a", torch.tensor(2.0), 1.0)
    meter.add("a", torch.tensor(4.0), 1.0)
    meter.add("b", torch.tensor(6.0), torch.tensor(3))  # token sum, token count
    assert meter.reduce(["a", "b", "c"], "cpu") == {"a": 3.0, "b": 2.0}
    assert meter.reduce(["a", "b"], "cpu") == {}


# ---------------------------------------------------------------------------------------------- gathering
def test_gather_helper_with_a_faked_collective(monkeypatch):
    # Fake rank r of 2 (open_clip style): all_gather returns the other rank's rows around the local tensor.
    image, text = (F.normalize(torch.randn(4, 8), dim=-1) for _ in range(2))
    scale = torch.tensor(5.0)
    monkeypatch.setattr(losses, "local_batch_sizes", lambda b, device: [b, b])
    per_rank = []
    for rank in range(2):
        local = slice(2 * rank, 2 * rank + 2)
        monkeypatch.setattr(losses, "world", lambda rank=rank: (rank, 2))

        def fake_all_gather(t, rank=rank):
            full = image if torch.equal(t, image[2 * rank : 2 * rank + 2]) else text
            return [t if r == rank else full[2 * r : 2 * r + 2] for r in range(2)]

        monkeypatch.setattr(losses.dist_fn, "all_gather", fake_all_gather)
        rows = image[local].clone().requires_grad_()
        gathered = gather_with_grad(rows)
        assert torch.equal(gathered, image)
        gathered.sum().backward()
        assert torch.equal(rows.grad, torch.ones_like(rows))  # the local slice keeps its gradient
        loss, logits = distributed_contrastive_loss(image[local], text[local], scale)
        assert logits.shape == (2, 4)
        per_rank.append(loss)
    full = symmetric_contrastive_loss(*contrastive_logits(image, text, scale))
    assert float(sum(per_rank) / 2) == pytest.approx(float(full), rel=1e-6)

    monkeypatch.setattr(losses, "local_batch_sizes", lambda b, device: [b, b + 1])
    with pytest.raises(ValueError, match="same local batch size"):
        distributed_contrastive_loss(image[:2], text[:2], scale)
    monkeypatch.setattr(losses, "world", lambda: (0, 1))
    assert gather_with_grad(image) is image  # no process group: identity


# ---------------------------------------------------------------------------------------------- schedules
class _State:
    def __init__(self, global_step, max_steps=100):
        self.global_step, self.max_steps = global_step, max_steps


def test_schedule_values():
    assert schedule_value("constant", 0.7, 3.0, 9.0) == 3.0
    assert schedule_value("linear", 0.25, 0.0, 8.0) == 2.0
    assert schedule_value("linear", 1.5, 0.0, 8.0) == 8.0  # clamped
    assert schedule_value("cosine", 0.0, 1.0, 0.0) == 1.0
    assert schedule_value("cosine", 0.5, 1.0, 0.0) == pytest.approx(0.5)
    assert schedule_value("cosine", 0.25, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule_value("cosine", 1.0, 1.0, 0.0) == pytest.approx(0.0)
    steps = [(0.5, 4), (0.9, 2)]
    assert [schedule_value("step", p, 8, steps=steps) for p in (0.0, 0.49, 0.5, 0.89, 0.95)] == [8, 8, 4, 4, 2]
    with pytest.raises(ValueError):
        schedule_value("exp", 0.1, 0, 1)


def test_schedule_callbacks():
    holder = torch.nn.Module()
    holder.blocks = torch.nn.ModuleList([torch.nn.Module()])
    holder.blocks[0].r, holder.momentum = 0, 0.0

    merge = AttributeScheduleCallback("blocks.0.r", "linear", 16, 0, as_int=True)
    merge.on_step_begin(None, _State(25), None, model=holder)
    assert holder.blocks[0].r == 12 and merge.value == 12
    with pytest.raises(AttributeError):
        AttributeScheduleCallback("blocks.0.missing").on_train_begin(None, _State(0), None, model=holder)

    momentum = MomentumScheduleCallback(start=0.995, end=1.0)
    values = []
    for step in (0, 50, 100):
        momentum.on_step_begin(None, _State(step), None, model=holder)
        values.append(holder.momentum)
    assert values == pytest.approx([0.995, 0.9975, 1.0])

    class Weights:
        loss_weights = {}

        def set_loss_weight(self, name, value):
            self.loss_weights[name] = value

    warmup = LossWeightWarmupCallback("contrastive_loss", weight=2.0, warmup_steps=4, trainer=Weights())
    ramp = []
    for step in range(6):
        warmup.on_step_begin(None, _State(step), None)
        ramp.append(warmup.trainer.loss_weights["contrastive_loss"])
    assert ramp == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_loss_weight_warmup_is_bound_to_the_trainer(tmp_path):
    warmup = LossWeightWarmupCallback("contrastive", weight=1.0, warmup_steps=10)
    trainer = CosmoTrainer(model=_model(), args=_args(tmp_path), data_collator=collate_rows, callbacks=[warmup])
    assert warmup.trainer is trainer
    warmup.on_step_begin(None, _State(3), None)
    assert trainer.loss_weight("contrastive_loss") == pytest.approx(0.3)
    assert trainer.loss_weight("lm_loss") == 1.0
