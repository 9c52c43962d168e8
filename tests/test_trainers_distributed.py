"""Two real processes (gloo): the gathered contrastive loss and its DDP-averaged gradients equal one process."""

import os
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.modeling.contrastive import contrastive_logits, symmetric_contrastive_loss
from cosmo_vl.modeling.vlp_objectives import ITMHead
from cosmo_vl.trainers import CosmoTrainer, distributed_contrastive_loss
from cosmo_vl.trainers.vl_trainer import VLTrainer

from tiny_configs import MEDIA_ID, tiny_cosmo_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (n, 9), generator=g)
    ids[:, 0], ids[:, 1] = 1, MEDIA_ID
    mask = torch.ones_like(ids)
    mask[::2, -2:] = 0  # some padding, so the attention pooling sees it
    pixel_values = torch.randn(n, 1, 1, 3, 16, 16, generator=g, dtype=torch.float64)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values}


def _model() -> CosmoForConditionalGeneration:
    # float64: the pooler's gradients sum terms ~100x larger than themselves; compare them without float32 noise
    torch.manual_seed(0)
    return CosmoForConditionalGeneration(tiny_cosmo_config()).double()


def _worker(rank: int, port: int, batch: dict, result_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _model()
        b = batch["input_ids"].shape[0] // WORLD
        local = {k: v[rank * b : (rank + 1) * b] for k, v in batch.items()}
        out = model(**local, return_loss=False)
        loss, _ = distributed_contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for grad in grads.values():  # what DDP does: average the ranks' gradients
            dist.all_reduce(grad)
            grad /= WORLD
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= WORLD
        try:  # unequal local batch sizes: every rank raises the same clear error (no hang)
            embeds = torch.nn.functional.normalize(torch.randn(2 + rank, 4), dim=-1)
            distributed_contrastive_loss(embeds, embeds, torch.tensor(1.0))  # raises before any gather
            mismatch = "no error"
        except ValueError as error:
            mismatch = str(error)
        torch.save({"loss": mean_loss, "grads": grads, "mismatch": mismatch}, os.path.join(result_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_contrastive_loss_and_gradients_equal_one_process(tmp_path):
    batch = _global_batch()
    # fork: the children reuse this process's imports (spawn would import transformers again in each).
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(_free_port(), batch, str(tmp_path)), nprocs=WORLD, join=True,
                       start_method=method)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(WORLD)]

    model = _model()
    out = model(**batch, return_loss=False)
    loss = symmetric_contrastive_loss(*contrastive_logits(out.image_embeds, out.text_embeds, out.logit_scale))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    assert float(ranks[0]["loss"]) == float(ranks[1]["loss"])
    assert abs(float(ranks[0]["loss"]) - float(loss.detach())) < 1e-5
    assert grads.keys() == ranks[0]["grads"].keys() and "model.logit_scale.value" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-5, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert all("same local batch size" in r["mismatch"] for r in ranks)
    # and the gathering matters: with local negatives only, the mean loss is another number
    with torch.no_grad():
        halves = [(out.image_embeds[i : i + 3], out.text_embeds[i : i + 3]) for i in (0, 3)]
        local_only = sum(symmetric_contrastive_loss(*contrastive_logits(*h, out.logit_scale)) for h in halves) / 2
    assert abs(float(local_only) - float(loss.detach())) > 1e-3


# ------------------------------------------------------------------------- ITM negatives from the global batch
class _ItmHarness:
    """The trainer's ITM code paths (CosMo's fusion and gathering, the shared loss) without a whole Trainer."""

    itm_gather = CosmoTrainer.itm_gather
    itm_fused = CosmoTrainer.itm_fused
    itm_positive_fused = CosmoTrainer.itm_positive_fused
    _itm_loss = VLTrainer._itm_loss

    def __init__(self):
        torch.manual_seed(5)
        self.args = SimpleNamespace(itm_negatives="hardest")  # deterministic: the same negatives on 1 or 2 processes
        self.objectives = SimpleNamespace(itm_head=ITMHead(tiny_cosmo_config().text_config.hidden_size).double())


def _itm_loss_and_grads(model, harness, batch, gathered):
    out = model(**batch, return_loss=False, output_hidden_states=True)
    loss = harness._itm_loss(model, batch, out, gathered=gathered)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["itm_head"] = harness.objectives.itm_head.classifier.weight.grad.clone()
    return loss.detach(), grads


def _itm_worker(rank: int, port: int, batch: dict, result_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        b = batch["input_ids"].shape[0] // WORLD
        local = {k: v[rank * b : (rank + 1) * b] for k, v in batch.items()}
        local["input_ids"], local["attention_mask"] = local["input_ids"][:, : 9 - rank], local["attention_mask"][:, : 9 - rank]
        loss, grads = _itm_loss_and_grads(_model(), _ItmHarness(), local, gathered=True)
        for value in [loss, *grads.values()]:  # what DDP does: average over processes
            dist.all_reduce(value)
            value /= WORLD
        torch.save({"loss": loss, "grads": grads}, os.path.join(result_dir, f"itm{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_itm_negatives_from_the_global_batch_equal_one_process(tmp_path):
    batch = _global_batch()
    batch["attention_mask"][3:, -1] = 0  # rank 1 pads to a shorter length than rank 0: rows are re-padded to gather
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_itm_worker, args=(_free_port(), batch, str(tmp_path)), nprocs=WORLD, join=True,
                       start_method=method)
    ranks = [torch.load(tmp_path / f"itm{rank}.pt") for rank in range(WORLD)]
    loss, grads = _itm_loss_and_grads(_model(), _ItmHarness(), batch, gathered=False)
    assert abs(float(ranks[0]["loss"]) - float(loss)) < 1e-6
    assert "itm_head" in grads and any(n.startswith("model.resampler.") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-5, atol=1e-7,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # and the pool matters: negatives drawn from each half alone give another loss
    model, harness = _model(), _ItmHarness()
    halves = [{k: v[i : i + 3] for k, v in batch.items()} for i in (0, 3)]
    local_only = sum(_itm_loss_and_grads(model, harness, h, gathered=False)[0] for h in halves) / 2
    assert abs(float(local_only) - float(loss)) > 1e-4


# ------------------------------------------------------------------------------- the trainer under real DDP
def _trainer_worker(rank: int, port: int, result_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # forked: forget the parent's single-process state
    grads, log = _train(result_dir, batch_size=2, ddp_backend="gloo")
    if rank == 0:
        torch.save({"grads": grads, "log": log}, os.path.join(result_dir, "trainer.pt"))
    dist.destroy_process_group()


def _train(output_dir: str, batch_size: int, **overrides):
    from test_trainers import GradCapture, _args, _samples
    from test_trainers import _model as _float_model
    from tiny_configs import collate_rows

    from cosmo_vl.trainers import CosmoTrainer

    capture = GradCapture()
    args = _args(output_dir, per_device_train_batch_size=batch_size, gradient_accumulation_steps=2,
                 contrastive_loss_weight=1.0, dataloader_drop_last=True, **overrides)
    trainer = CosmoTrainer(model=_float_model(), args=args, train_dataset=_samples(8, media=1),
                           data_collator=collate_rows, callbacks=[capture])
    trainer.train()
    return capture.grads, next(e for e in trainer.state.log_history if "loss" in e)


def test_trainer_step_on_two_processes_equals_one_process(tmp_path):
    # 2 processes x micro-batch 2 x 2 accumulation steps == 1 process x micro-batch 4 x 2 accumulation steps:
    # LM tokens counted over both processes, contrastive negatives gathered from both, gradients averaged by DDP.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_trainer_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method=method)
    ddp = torch.load(tmp_path / "trainer.pt")
    grads, log = _train(str(tmp_path / "single"), batch_size=4)
    assert grads.keys() == ddp["grads"].keys() and "model.logit_scale.value" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for key in ("loss", "lm_loss", "contrastive_loss", "pair_lm_loss"):
        assert abs(ddp["log"][key] - log[key]) < 1e-5, key
