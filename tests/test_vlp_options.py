"""The shared VLP objectives as trainer options on CosMo: ITM, momentum distillation + queues, GRIT sampler,
their optimizer group, gradient averaging and checkpoints."""

import datasets
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import cosmo_vl.trainers.vl_trainer as vl_trainer
from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.modeling.contrastive import contrastive_logits, symmetric_contrastive_loss
from cosmo_vl.trainers import CosmoTrainer, CosmoTrainingArguments, VLTrainingArguments
from cosmo_vl.trainers.objectives import greedy_hard_negative_chain
from cosmo_vl.trainers.vlp_options import (
    CHECKPOINT_NAME,
    SAMPLER_CHECKPOINT_NAME,
    IndexedCollator,
    IndexedDataset,
    last_token_states,
    momentum_features,
    same_text_mask,
)

from tiny_configs import MEDIA_ID, collate_rows, tiny_cosmo_config


def _samples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(5, 90, (6 + i % 3,), generator=g)
        ids[0], ids[1] = 1, MEDIA_ID
        labels = ids.clone()
        labels[:2] = -100
        rows.append({"input_ids": ids, "labels": labels, "pixel_values": torch.randn(1, 1, 3, 16, 16, generator=g)})
    return rows




def _model(**overrides) -> CosmoForConditionalGeneration:
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config(**overrides))
    with torch.no_grad():  # open the gates so the cross-attention (and so ITM) reaches every trainable block
        for name, param in model.named_parameters():
            if name.endswith("_gate"):
                param.fill_(0.5)
    return model


def _args(tmp_path, **overrides) -> CosmoTrainingArguments:
    kwargs = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-3,
                  report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True,
                  train_sampling_strategy="sequential")
    kwargs.update(overrides)
    return CosmoTrainingArguments(**kwargs)


# ------------------------------------------------------------------------------------------------- options
def test_arguments_validate_and_default_off(tmp_path):
    with pytest.raises(ValueError, match="itm_negatives"):
        VLTrainingArguments(output_dir="unused", itm_negatives="random", use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="momentum"):
        VLTrainingArguments(output_dir="unused", momentum=1.5, use_cpu=True, report_to=[])
    trainer = CosmoTrainer(model=_model(), args=_args(tmp_path), data_collator=collate_rows)
    assert trainer.objectives is None and trainer._grit_sampler is None


def test_helpers():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])  # right and left padding
    torch.testing.assert_close(last_token_states(hidden, mask), torch.stack([hidden[0, 1], hidden[1, 3]]))
    ids = torch.tensor([[1, 7, 8, 0], [1, 7, 8, 9], [1, 7, 8, 5]])
    same = same_text_mask(ids, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]))
    assert same.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    data = IndexedDataset([{"a": 1}, {"a": 2}])
    assert data[1] == {"a": 2, "dataset_index": 1} and len(data) == 2
    assert data.__getitems__([1, 0]) == [{"a": 2, "dataset_index": 1}, {"a": 1, "dataset_index": 0}]
    # A `datasets.Dataset` fetches batches through its own __getitems__: the index must still be added.
    arrow = IndexedDataset(datasets.Dataset.from_dict({"a": [5, 6, 7]}))
    assert arrow.__getitems__([2, 0]) == [{"a": 7, "dataset_index": 2}, {"a": 5, "dataset_index": 0}]
    assert arrow.column_names == ["a"]
    batch = IndexedCollator(lambda rows: {"a": torch.tensor([r["a"] for r in rows])})([data[1], data[0]])
    assert batch["dataset_index"].tolist() == [1, 0] and batch["a"].tolist() == [2, 1]


# ----------------------------------------------------------------------------------------------------- ITM
def test_itm_fused_pairs_and_loss(tmp_path):
    trainer = CosmoTrainer(model=_model(), args=_args(tmp_path, itm_loss_weight=2.0), data_collator=collate_rows)
    assert trainer.loss_weight("itm_loss") == 2.0 and trainer.objectives.itm_head is not None
    model = trainer.model.train()
    batch = collate_rows(_samples(4))
    out = model(**batch, output_hidden_states=True)
    rows = torch.arange(4)
    # The matched pairs from the training forward equal a second pass over the same (image, text) pairs.
    torch.testing.assert_close(trainer.itm_positive_fused(model, batch, out),
                               trainer.itm_fused(model, batch, out, rows, rows), rtol=1e-5, atol=1e-5)
    # Swapping images changes the fused state: the text attends to another image's latents.
    swapped = trainer.itm_fused(model, batch, out, rows.roll(1), rows)
    assert not torch.allclose(swapped, trainer.itm_positive_fused(model, batch, out), atol=1e-4)

    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    loss.backward()
    head = trainer.objectives.itm_head.classifier
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0
    cross = [p.grad for n, p in model.named_parameters() if ".cross_attention." in n and p.requires_grad]
    assert cross and all(g is not None for g in cross)
    # All captions the same: no negatives, no ITM term.
    same = {**batch, "input_ids": batch["input_ids"][:1].expand(4, -1), "attention_mask": batch["attention_mask"][:1].expand(4, -1)}
    assert trainer._itm_loss(model, same, outputs) is None


# ------------------------------------------------------------------------------------------------ momentum
def test_momentum_parameters_features_and_ema(tmp_path):
    args = _args(tmp_path, momentum_distillation=True, momentum=0.9, momentum_queue_size=6)
    # A trained LM below the split is tracked; the frozen vision tower is shared, not copied.
    trainer = CosmoTrainer(model=_model(freeze_language_model=False), args=args, data_collator=collate_rows)
    model, state = trainer.model, trainer.objectives
    names = state.momentum_names
    assert any(n.startswith("model.resampler.") for n in names)
    assert any(n.startswith("model.text_projection.") for n in names)
    assert not any(n.startswith("model.vision_model.") for n in names)
    assert not any(".cross_attention." in n or n.startswith(("lm_head.", "model.logit_scale.")) for n in names)
    depth, layers = model.config.unimodal_depth, model.config.text_config.num_hidden_layers
    assert all(any(f".layers.{i}." in n for n in names) for i in range(depth))
    assert not any(f".layers.{i}." in n for n in names for i in range(depth, layers))

    model.train()
    batch = collate_rows(_samples(4))
    online = trainer.contrastive_features(model, batch)
    momentum = momentum_features(model, state.momentum_dict(), trainer.contrastive_features, batch)
    for a, b in zip(online, momentum):
        torch.testing.assert_close(a, b)
    out = model(**batch, return_loss=True)
    torch.testing.assert_close(online[0], out.image_embeds)
    torch.testing.assert_close(online[1], out.text_embeds)

    # First step: alpha ramps from 0 and the queue is empty, so the term is the plain in-batch InfoNCE.
    trainer.state.max_steps, trainer.state.num_train_epochs = 10, 1
    _, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    plain = symmetric_contrastive_loss(*contrastive_logits(out.image_embeds, out.text_embeds, out.logit_scale))
    meter = trainer._meters["train"].totals
    assert meter["contrastive_loss"][0] == pytest.approx(float(plain.detach()), rel=1e-5)
    assert len(state.image_queue) == 4 and len(state.text_queue) == 4

    # EMA once per optimizer step: momentum <- 0.9 momentum + 0.1 online.
    name = next(n for n in names if n.startswith("model.resampler."))
    param = dict(model.named_parameters())[name]
    before = state.momentum_dict()[name].clone()
    with torch.no_grad():
        param.add_(1.0)
    trainer.state.global_step = 1
    trainer.compute_loss(model, batch)
    trainer.compute_loss(model, batch)  # second micro-batch of the same step: no second update
    torch.testing.assert_close(state.momentum_dict()[name], 0.9 * before + 0.1 * param.detach())
    assert len(state.image_queue) == 6  # wrapped around at its size


# -------------------------------------------------------------------------------------- training and saving
def test_training_with_every_option_checkpoints_and_resumes(tmp_path):
    args = _args(tmp_path, max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2,
                 itm_loss_weight=1.0, momentum_distillation=True, momentum_queue_size=4, grit_sampler=True)
    trainer = CosmoTrainer(model=_model(), args=args, train_dataset=_samples(4), data_collator=collate_rows)
    head_before = trainer.objectives.itm_head.classifier.weight.detach().clone()
    trainer.train()
    head = trainer.objectives.itm_head.classifier.weight
    assert not torch.allclose(head, head_before)  # in the optimizer, trained
    assert any(head is p for group in trainer.optimizer.param_groups for p in group["params"])
    assert head.grad is None or float(head.grad.abs().sum()) > 0
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all("itm_loss" in e and "contrastive_loss" in e for e in logs)
    saved = load_file(tmp_path / "checkpoint-2" / CHECKPOINT_NAME)
    assert "itm_head.classifier.weight" in saved and "image_queue.queue" in saved

    fresh = CosmoTrainer(model=_model(), args=args, train_dataset=_samples(4), data_collator=collate_rows)
    fresh._load_from_checkpoint(str(tmp_path / "checkpoint-2"))
    for key, value in fresh.objectives.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_grit_sampler_records_by_index_and_chains_the_next_epoch(tmp_path):
    args = _args(tmp_path, max_steps=8, per_device_train_batch_size=2, grit_sampler=True, learning_rate=0.0)
    trainer = CosmoTrainer(model=_model(), args=args, train_dataset=_samples(8), data_collator=collate_rows)
    calls, original = [], None

    def spy(image, text, indices=None):
        calls.append((image.detach().clone(), text.detach().clone(), indices.clone()))
        return original(image, text, indices=indices)

    real_sampler = trainer._get_train_sampler

    def make_sampler(dataset=None):
        nonlocal original
        sampler = real_sampler(dataset)
        original = sampler.record
        sampler.record = spy
        return sampler

    trainer._get_train_sampler = make_sampler
    trainer.train()
    sampler = trainer._grit_sampler
    assert len(calls) == 8
    first = torch.cat([c[2] for c in calls[:4]]).tolist()
    second = torch.cat([c[2] for c in calls[4:]]).tolist()
    assert sorted(first) == sorted(second) == list(range(8))
    assert second == sampler._order  # recorded in the order the sampler gave

    # Epoch 2's order is the greedy chain of epoch 1's embeddings (one search group: 100 batches > 8 pairs).
    image = torch.zeros(8, calls[0][0].shape[1])
    text = torch.zeros_like(image)
    for img, txt, idx in calls[:4]:
        image[idx], text[idx] = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(args.seed + 1))
    expected = perm[greedy_hard_negative_chain(image[perm], text[perm])].tolist()
    assert second == expected


def test_head_gradients_are_averaged_over_processes(monkeypatch, tmp_path):
    trainer = CosmoTrainer(model=_model(), args=_args(tmp_path, itm_loss_weight=1.0, gather_contrastive=False),
                           data_collator=collate_rows)
    batch = collate_rows(_samples(4))
    torch.manual_seed(1)
    trainer.training_step(trainer.model, batch)
    local = trainer.objectives.itm_head.classifier.weight.grad.clone()

    # A faked second process whose head gradient is all ones; sync step -> (local + 1) / 2.
    monkeypatch.setattr(vl_trainer, "world", lambda: (0, 2))
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, op=None: tensor.add_(1.0))
    trainer.model.zero_grad()
    trainer._heads_zeroed_at = -1
    torch.manual_seed(1)
    trainer.training_step(trainer.model, batch)
    torch.testing.assert_close(trainer.objectives.itm_head.classifier.weight.grad, (local + 1.0) / 2)


def test_indexed_dataset_needs_map_style(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(_samples(2))

    with pytest.raises(ValueError, match="map-style"):
        CosmoTrainer(model=_model(), args=_args(tmp_path, grit_sampler=True), train_dataset=Stream(),
                     data_collator=collate_rows)
    assert CHECKPOINT_NAME == "vlp_objectives.safetensors"


def test_grit_order_and_recordings_resume_from_a_checkpoint(tmp_path):
    """Stopped mid-epoch at step 6 (4 steps per epoch), a resumed run draws the same batches as an uninterrupted
    one: the rest of the running GRIT epoch (ordered by embeddings gone with the previous epoch) and the next epoch
    (ordered by embeddings recorded partly before the checkpoint)."""

    def run(output_dir, resume=None):
        args = _args(output_dir, max_steps=10, per_device_train_batch_size=2, grit_sampler=True, save_strategy="steps",
                     save_steps=6, learning_rate=1e-2)
        trainer = CosmoTrainer(model=_model(), args=args, train_dataset=_samples(8), data_collator=collate_rows)
        drawn, compute_loss = [], trainer.compute_loss

        def spy(model, inputs, *a, **kw):
            drawn.append(inputs["dataset_index"].tolist())
            return compute_loss(model, inputs, *a, **kw)

        trainer.compute_loss = spy
        trainer.train(resume_from_checkpoint=resume)
        return drawn

    full = run(tmp_path / "full")
    assert (tmp_path / "full" / "checkpoint-6" / SAMPLER_CHECKPOINT_NAME).is_file()
    resumed = run(tmp_path / "full", resume=str(tmp_path / "full" / "checkpoint-6"))
    assert len(full) == 10 and resumed == full[6:]
    assert sorted(sum(full[4:8], [])) == list(range(8))  # epoch 1 is a full pass, in its GRIT order
