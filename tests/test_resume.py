"""A run killed with SIGKILL after a checkpoint resumes to the same losses and data order as an uninterrupted run;
its checkpoints hold only safetensors and JSON files (no pickles)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cosmo_vl.processing import load_embedded_dataset
from cosmo_vl.trainers import last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 120


def _command(data_dir, output_dir, *extra):
    return [
        sys.executable, str(ROOT / "examples" / "pretrain.py"), "--dataset", str(data_dir), "--output_dir", str(output_dir),
        "--max_steps", str(STEPS), "--save_steps", "4", "--logging_steps", "1", "--per_device_train_batch_size", "4",
        "--final_evaluation", "false", "--report_to", "none", "--save_total_limit", "3", "--warmup_steps", "2",
        "--dataloader_num_workers", "0", *extra,
    ]


def _losses(output_dir):
    state = json.loads((Path(last_complete_checkpoint(output_dir)) / "trainer_state.json").read_text())
    return {e["step"]: (e["loss"], e.get("lm_loss"), e.get("contrastive_loss")) for e in state["log_history"] if "loss" in e}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data_dir = tmp_path / "data"
    load_embedded_dataset("shapes-captions", cache_dir=str(tmp_path / "cache"), num_train=96, num_test=8).save_to_disk(str(data_dir))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

    subprocess.run(_command(data_dir, tmp_path / "full"), check=True, env=env, capture_output=True, timeout=600)
    reference = _losses(tmp_path / "full")
    assert len(reference) == STEPS

    run = subprocess.Popen(_command(data_dir, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "killed" / "checkpoint-8" / "trainer_state.json").exists():
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int(Path(last_complete_checkpoint(tmp_path / "killed")).name.split("-")[1])
    assert 8 <= killed_at < STEPS

    subprocess.run(_command(data_dir, tmp_path / "killed", "--resume_from_checkpoint", "last"), check=True, env=env,
                   capture_output=True, timeout=600)
    resumed = _losses(tmp_path / "killed")
    assert resumed.keys() == reference.keys()
    for step, values in reference.items():
        for ours, theirs in zip(resumed[step], values):
            if theirs is not None:
                assert abs(ours - theirs) < 1e-4, (step, resumed[step], values)
    last = Path(last_complete_checkpoint(tmp_path / "killed"))
    assert (last / "model.safetensors").exists() and not (last / "pytorch_model.bin").exists()
    for folder in [*(tmp_path / "full").glob("checkpoint-*"), *(tmp_path / "killed").glob("checkpoint-*")]:
        names = [p.name for p in folder.iterdir()]
        # tensors as safetensors, everything else as text (json, the chat template as jinja): no pickles
        assert names and all(n.endswith((".safetensors", ".json", ".jinja")) for n in names), (folder.name, names)
    assert {"optimizer.safetensors", "scheduler.json", "rng_state.safetensors", "training_args.json"} <= {
        p.name for p in last.iterdir()}
