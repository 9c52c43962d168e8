"""bench/_workload.py's generation task on CosMo and the bare LM at a tiny shape (no OpenFlamingo needed; speed
itself is not asserted)."""

import sys

from script_loading import ROOT, load_script

TINY = {"vision": {"width": 64, "layers": 1, "patch": 16, "image": 32},
        "lm": {"hidden": 64, "layers": 2, "heads": 2, "intermediate": 128, "vocab": 256}}


def test_generation_task_times_cosmo_the_bare_lm_and_media_encoding():
    sys.path.insert(0, str(ROOT / "bench"))  # _workload imports its sibling _peer_env
    workload = load_script("bench/_workload.py", "bench_workload")
    task = {"kind": "pair_generate", "shape": TINY, "num_media": 2, "batch": 1, "new_tokens": 4, "warmup": 0,
            "iters": 2, "variants": [{"model": "cosmo"}, {"model": "lm_only"}]}
    out = workload.pair_generate_task(task)
    assert set(out["time_s"]) == {"cosmo", "lm_only", "media_encoding"}
    assert all(len(v) == 2 and min(v) > 0 for v in out["times_s"].values())
    assert out["new_tokens"] == {"cosmo": 4, "lm_only": 4}  # encoding generates nothing
    assert set(out["tokens_per_s"]) == {"cosmo", "lm_only"}
    assert out["tokens_per_s"]["cosmo"] == 4 / out["time_s"]["cosmo"]


def test_trainer_optimizer_is_the_trainers_default_over_trainable_parameters():
    import torch
    from transformers import Trainer, TrainingArguments

    workload = load_script("bench/_workload.py", "bench_workload")
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[0].requires_grad_(False)
    optimizer = workload.trainer_optimizer(model, lr=0.01)
    default_cls, default_kwargs = Trainer.get_optimizer_cls_and_kwargs(
        TrainingArguments(output_dir="unused", report_to="none"))
    assert type(optimizer) is default_cls and optimizer.defaults.get("fused") == default_kwargs.get("fused")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == 2 and all(p.requires_grad for p in params)
    assert optimizer.param_groups[0]["lr"] == 0.01
