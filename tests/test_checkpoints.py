"""Checkpoints of safetensors and JSON only: optimizer, scheduler and RNG round trips, and an exact Trainer resume."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from torch import nn
from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

from cosmo_vl.trainers import SafetensorsCheckpointMixin
from cosmo_vl.trainers.checkpoints import (
    load_json_state,
    load_optimizer_state,
    load_rng_state,
    save_json_state,
    save_optimizer_state,
    save_rng_state,
)

OPTIMIZERS = {
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1, amsgrad=True),
    "sgd_momentum": lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam_tensor_lr": lambda groups: torch.optim.Adam(groups, lr=torch.tensor(1e-3), foreach=False),
}


def assert_identical(ours, theirs, where="state"):
    """Same types, dtypes, shapes and values, recursively (no tolerance)."""
    assert type(ours) is type(theirs), (where, type(ours), type(theirs))
    if isinstance(theirs, torch.Tensor):
        assert (ours.dtype, ours.shape) == (theirs.dtype, theirs.shape), where
        assert torch.equal(ours, theirs), where
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), where
        for key in theirs:
            assert_identical(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_identical(a, b, f"{where}.{i}")
    else:
        assert ours == theirs or (isinstance(theirs, float) and math.isnan(ours) and math.isnan(theirs)), where


def _stepped_optimizer(name: str, steps: int = 3):
    """A float32 and a bfloat16 parameter group (different hyper-parameters), stepped a few times."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(4, 3), "b": nn.Linear(3, 2).to(torch.bfloat16)})
    groups = [{"params": list(model["a"].parameters())}, {"params": list(model["b"].parameters()), "weight_decay": 0.0}]
    optimizer = OPTIMIZERS[name](groups)
    for _ in range(steps):
        x = torch.randn(5, 4)
        model["b"](model["a"](x).to(torch.bfloat16)).float().pow(2).mean().backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_state_round_trip_is_exact(tmp_path, name):
    model, optimizer = _stepped_optimizer(name)
    original = optimizer.state_dict()
    path = tmp_path / "optimizer.safetensors"
    save_optimizer_state(original, path)
    assert_identical(load_optimizer_state(path), original)
    with safetensors.safe_open(str(path), "pt") as f:
        assert "state.0.exp_avg" in f.keys() if name != "sgd_momentum" else "state.0.momentum_buffer" in f.keys()

    # A fresh optimizer loaded from the file continues exactly as the original.
    fresh_model, fresh = _stepped_optimizer(name, steps=0)
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(load_optimizer_state(path))
    assert_identical(fresh.state_dict(), original)
    for m, opt in ((model, optimizer), (fresh_model, fresh)):
        for p in m.parameters():
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(p, q)


def test_scheduler_round_trip_is_exact(tmp_path):
    _, optimizer = _stepped_optimizer("adamw")
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    save_json_state(scheduler.state_dict(), tmp_path / "scheduler.json")
    assert_identical(load_json_state(tmp_path / "scheduler.json"), scheduler.state_dict())


def _draws():
    return (torch.rand(4), [random.random() for _ in range(3)], random.gauss(0.0, 1.0), np.random.rand(4),
            np.random.standard_normal())


def test_rng_round_trip(tmp_path):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    random.gauss(0.0, 1.0), np.random.standard_normal()  # leave a cached Gaussian in both states
    save_rng_state(tmp_path / "rng_state.safetensors")
    expected = _draws()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    load_rng_state(tmp_path / "rng_state.safetensors")
    got = _draws()
    assert torch.equal(got[0], expected[0]) and got[1:3] == expected[1:3]
    assert np.array_equal(got[3], expected[3]) and got[4] == expected[4]


@pytest.mark.parametrize("where, key", [("state", r"'state\.1\.schedule'"),
                                        ("param_groups", r"'param_groups\.0\.hook'")])
def test_unsupported_state_entry_is_a_clear_error(tmp_path, where, key):
    _, optimizer = _stepped_optimizer("adamw")
    state = optimizer.state_dict()
    if where == "state":
        state["state"][1]["schedule"] = {1, 2}
    else:
        state["param_groups"][0]["hook"] = object()
    with pytest.raises(TypeError, match=key + r".*neither a tensor nor JSON-serialisable"):
        save_optimizer_state(state, tmp_path / "optimizer.safetensors")
    with pytest.raises(TypeError, match=r"'scheduler\.last_lr' is a tensor"):
        save_json_state({"last_lr": torch.tensor(1.0)}, tmp_path / "scheduler.json")


# ------------------------------------------------------------------------------------------- a Trainer resumes
class _Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 1))

    def forward(self, x, y):
        return {"loss": nn.functional.mse_loss(self.net(x).squeeze(-1), y)}


class _Trainer(SafetensorsCheckpointMixin, Trainer):
    pass


def _train(output_dir, resume=None, trainer_class=_Trainer):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(4, generator=generator), "y": torch.randn((), generator=generator)} for _ in range(16)]
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=10, save_steps=2, per_device_train_batch_size=4, logging_steps=1,
        learning_rate=1e-2, warmup_steps=2, report_to="none", seed=0, use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = trainer_class(model=_Regressor(), args=args, train_dataset=data)
    trainer.train(resume_from_checkpoint=resume)
    losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    return losses, trainer.model.state_dict()


def test_trainer_checkpoints_are_safetensors_and_json_and_resume_exactly(tmp_path):
    losses, weights = _train(tmp_path / "full")
    folders = sorted((tmp_path / "full").glob("checkpoint-*"))
    assert len(folders) == 5
    for folder in folders:
        names = {p.name for p in folder.iterdir()}
        assert all(n.endswith((".safetensors", ".json")) for n in names), names
        assert {"optimizer.safetensors", "scheduler.json", "rng_state.safetensors", "training_args.json"} <= names
    assert json.loads((folders[0] / "training_args.json").read_text())["max_steps"] == 10

    # Resume at an epoch boundary (4 batches an epoch) and in the middle of one.
    for step in (4, 6):
        out = tmp_path / f"resumed-{step}"
        resumed, resumed_weights = _train(out, resume=str(tmp_path / "full" / f"checkpoint-{step}"))
        assert {s: v for s, v in resumed.items() if s > step} == {s: v for s, v in losses.items() if s > step}
        assert_identical(resumed_weights, weights)
        assert not [p for p in Path(out).rglob("*") if p.suffix in (".pt", ".bin", ".pth")]

    # A checkpoint pickled by the plain Trainer still resumes exactly.
    _train(tmp_path / "pickled", trainer_class=Trainer)
    assert (tmp_path / "pickled" / "checkpoint-6" / "optimizer.pt").is_file()
    resumed, resumed_weights = _train(tmp_path / "from-pickled", resume=str(tmp_path / "pickled" / "checkpoint-6"))
    assert {s: v for s, v in resumed.items() if s > 6} == {s: v for s, v in losses.items() if s > 6}
    assert_identical(resumed_weights, weights)
