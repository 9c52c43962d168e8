"""Input-pipeline timing (`cosmo_vl.benchmarking`), the GPU data-loader defaults and `bench/input_pipeline.py`."""

import json
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, RandomSampler
from transformers import Trainer, TrainingArguments

import cosmo_vl.trainers.dataloader_defaults as defaults
from cosmo_vl.benchmarking import StepTimer, loader_throughput
from cosmo_vl.processing import load_embedded_dataset

from script_loading import load_script


class Rows(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)]), "y": torch.tensor([2.0 * i]), "index": i}


def keep_even(rows):
    """Drops odd rows (as a collator that skips broken samples would)."""
    kept = [r for r in rows if r["index"] % 2 == 0]
    return {"x": torch.stack([r["x"] for r in kept]), "y": torch.stack([r["y"] for r in kept])}


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_throughput_counts_the_rows_the_collator_returns(workers):
    out = loader_throughput(Rows(10), keep_even, batch_size=4, num_workers=workers, num_batches=5, warmup_batches=1)
    # The same shuffled draw, replayed: 6 batches of 4 over reshuffled passes of the 10 rows.
    order = list(RandomSampler(Rows(10), num_samples=24, generator=torch.Generator().manual_seed(0)))
    assert out["samples"] == sum(1 for i in order[4:] if i % 2 == 0)
    assert out["samples_per_s"] == pytest.approx(out["samples"] / out["seconds"])
    assert out["ms_per_batch"] == pytest.approx(1e3 * out["seconds"] / 5)
    with pytest.raises(ValueError, match="num_batches"):
        loader_throughput(Rows(10), keep_even, batch_size=4, num_batches=0)


class SlowRegression(nn.Module):
    """y = w * x; each forward takes at least `delay` seconds."""

    def __init__(self, delay: float):
        super().__init__()
        self.w, self.delay = nn.Parameter(torch.zeros(1)), delay

    def forward(self, x, y):
        time.sleep(self.delay)
        return {"loss": ((self.w * x - y) ** 2).mean()}


def slow_collate(rows, delay=0.03):
    time.sleep(delay)
    return {"x": torch.stack([r["x"] for r in rows]), "y": torch.stack([r["y"] for r in rows])}


def test_step_timer_splits_data_wait_from_compute(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=8, logging_steps=3,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0, remove_unused_columns=False)
    timer = StepTimer(parts=True)
    trainer = Trainer(model=SlowRegression(0.02), args=args, train_dataset=Rows(64), data_collator=slow_collate,
                      callbacks=[timer])
    trainer.train()
    out = timer.summary()
    assert len(timer.steps) == 8 and out["steps"] == 7  # the first step is left out
    # Gaps after the logs of steps 3 and 6 are kept apart; the first gap (train begin) is skipped with step 1.
    assert [s["events"] for s in timer.steps[1:]] == [[], [], ["log"], [], [], ["log"], []]
    assert out["plain_steps"] == 5
    assert 0.03 <= out["data_wait_s"] < 0.03 + 0.5  # the collator's sleep is the wait for the batch
    assert 0.02 <= out["forward_s"] <= out["compute_s"]
    assert out["forward_s"] + out["backward_s"] + out["optimizer_s"] + out["host_other_s"] == pytest.approx(
        out["compute_s"], abs=1e-3)  # medians of per-step parts that add up exactly
    assert out["steps_per_s"] == pytest.approx(out["steps"] / out["wall_s"])
    assert timer.first_step_begin is not None


def _args(device: str, workers: int = 0):
    return SimpleNamespace(device=torch.device(device), dataloader_num_workers=workers,
                           dataloader_persistent_workers=False)


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(3))


class PerEpoch(Rows):
    def set_epoch(self, epoch):
        self.epoch = epoch


def test_auto_dataloader_workers_only_on_gpu_when_not_given(monkeypatch):
    monkeypatch.setattr(defaults, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpu = _args("cpu")
    assert defaults.auto_dataloader_workers(cpu, [], Rows(4)) == 0 and not cpu.dataloader_persistent_workers
    gpu = _args("cuda")
    assert defaults.auto_dataloader_workers(gpu, ["--max_steps", "5"], Rows(4)) == 8
    assert gpu.dataloader_num_workers == 8 and gpu.dataloader_persistent_workers
    given = _args("cuda", 2)
    assert defaults.auto_dataloader_workers(given, ["--dataloader_num_workers=2"], Rows(4)) == 2
    assert not given.dataloader_persistent_workers
    per_epoch = _args("cuda")  # live workers would keep the first epoch's dataset
    assert defaults.auto_dataloader_workers(per_epoch, [], PerEpoch(4)) == 8
    assert not per_epoch.dataloader_persistent_workers
    assert defaults.auto_dataloader_workers(_args("cuda"), [], Stream()) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four processes share the 16 cores
    assert defaults.auto_dataloader_workers(_args("cuda"), [], Rows(4)) == 3
    monkeypatch.setattr(defaults, "usable_cores", lambda: 1)
    assert defaults.auto_dataloader_workers(_args("cuda"), [], Rows(4)) == 0


def test_input_pipeline_bench_writes_consistent_json(tmp_path):
    cache = str(tmp_path / "cache")
    load_embedded_dataset("shapes-captions", cache_dir=cache, num_train=24, num_test=4).save_to_disk(
        str(tmp_path / "captions"))
    load_embedded_dataset("shapes-videos", cache_dir=cache, num_train=8, num_test=2).save_to_disk(
        str(tmp_path / "videos"))
    bench = load_script("bench/input_pipeline.py", "bench_input_pipeline")
    output = tmp_path / "out.json"
    threads = torch.get_num_threads()
    try:
        code = bench.main(["--output", str(output), "--quick", "--batch_size", "4", "--workers", "0", "1",
                           "--trainer_workers", "0", "--steps", "4", "--image_dataset", str(tmp_path / "captions"),
                           "--video_dataset", str(tmp_path / "videos"), "--threads", "1",
                           "--extra", "--dataset", str(tmp_path / "captions"), "--per_device_train_batch_size", "4",
                           "--max_eval_samples", "4"])
    finally:
        torch.set_num_threads(threads)  # the run set this process's threads
    assert code == 0
    result = json.loads(output.read_text())
    for kind, batches in (("image", 10), ("video", 3)):
        rows = result["collator"][kind]
        assert [r["num_workers"] for r in rows] == [0, 1]
        assert all(r["samples"] == 4 * batches and r["samples_per_s"] > 0 for r in rows)
    (run,) = result["trainer"]
    assert run["workers"] == 0 and run["steps"] == 3
    assert run["compute_ms"] == pytest.approx(1e3 * run["compute_s"])
    assert 0 < run["to_first_step_s"] < run["main_s"]
    assert result["start"]["import_s"] >= 0
