"""examples/pretrain.py under `accelerate launch` with the settings of examples/configs/fsdp.yaml (FSDP2, one unit per
MultimodalDecoderLayer / PerceiverLayer / CLIPEncoderLayer, reshard after forward, SHARDED_STATE_DICT) on 2 CPU
processes over gloo: the same losses and weights as one process on the same global batch, a sharded checkpoint
that resumes to the same losses, and a final Hub folder with one consolidated model.safetensors. The same for
examples/configs/deepspeed_zero2.yaml where deepspeed is installed (it is not a test dependency).

accelerate runs these configs on GPUs only; tests/sharded_cpu_launch.py lets its FSDP / DeepSpeed path run on CPU.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DeepSpeedPlugin
from safetensors.torch import load_file
from transformers import set_seed

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.presets import get_config
from cosmo_vl.processing import load_embedded_dataset
from cosmo_vl.trainers.sharding import check_launch

from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_AT, BATCH = 4, 2, 2  # per process; the one-process reference takes 2 * BATCH

pretrain = load_script("examples/pretrain.py", "pretrain_example")


def _tiny_config():
    """cosmo-tiny's tokenizer and special tokens, smallest towers (about 190k parameters)."""
    config = get_config("cosmo-tiny")
    config.vision_config.update(dict(hidden_size=32, intermediate_size=64, num_attention_heads=2))
    config.text_config.update(dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1))
    config.update(dict(resampler_depth=1, num_latents=4, contrastive_dim=16, cross_attention_heads=2,
                       cross_attention_head_dim=16))
    return config


def _cpu_config(name: str, path: Path) -> Path:
    """examples/configs/<name> for 2 CPU processes: mixed precision "no" (bf16 is a GPU setting, and the comparison
    below is in float32); everything under fsdp_config / deepspeed_config is kept as it is."""
    config = yaml.safe_load((ROOT / "examples" / "configs" / name).read_text())
    config.update(num_processes=2, mixed_precision="no")
    path.write_text(yaml.safe_dump(config))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    load_embedded_dataset("shapes-captions", cache_dir=str(root / "cache"), num_train=2 * BATCH * STEPS,
                          num_test=2).save_to_disk(str(root / "data"))
    _tiny_config().save_pretrained(root / "config")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return SimpleNamespace(root=root, env=env)


@pytest.fixture(scope="module")
def reference(setup) -> SimpleNamespace:
    """One process in this one (no distributed state) with the global batch 2 * BATCH: its losses and weights."""
    out = setup.root / "single"
    assert pretrain.main(_pretrain_args(setup, out, 2 * BATCH, "--final_evaluation", "false")[1:]) == 0
    losses = _losses(out / f"checkpoint-{STEPS}")
    assert len(losses) == STEPS
    return SimpleNamespace(losses=losses, weights=load_file(out / f"checkpoint-{STEPS}" / "model.safetensors"))


def _pretrain_args(setup, output_dir: Path, batch: int, *extra) -> list[str]:
    return [
        str(ROOT / "examples" / "pretrain.py"), "--config", str(setup.root / "config"),
        "--dataset", str(setup.root / "data"), "--output_dir", str(output_dir), "--max_steps", str(STEPS),
        "--per_device_train_batch_size", str(batch), "--save_steps", str(SAVE_AT), "--logging_steps", "1",
        "--warmup_steps", "0", "--report_to", "none", "--disable_tqdm", "true", "--max_eval_samples", "1",
        # the same samples in the same order whatever the number of processes (GRIT batches are random)
        "--train_sampling_strategy", "sequential", "--grit_sampler", "false",
        # Adam divides by sqrt(v) + eps: with the default 1e-8, parameters whose gradient is ~1e-9 (unused rows of
        # the tied embedding) turn float32 summation-order noise into 1e-4 steps; 1e-4 keeps the update exact.
        "--adam_epsilon", "1e-4", *extra,
    ]


def _launch(setup, config_name: str, output_dir: Path, *extra) -> None:
    config = _cpu_config(config_name, setup.root / f"cpu_{config_name}")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(_free_port()), str(ROOT / "tests" / "sharded_cpu_launch.py"),
               *_pretrain_args(setup, output_dir, BATCH, *extra)]
    done = subprocess.run(command, env=setup.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _losses(checkpoint: Path) -> dict[int, tuple]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: (e["loss"], e["lm_loss"], e["contrastive_loss"]) for e in history if "loss" in e}


def _assert_close(ours: dict, theirs: dict, what: str) -> None:
    assert ours.keys() == theirs.keys(), what
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-5, msg=lambda m, k=key: f"{what} {k}: {m}")


def _check_final_folder(final: Path, trained: dict) -> None:
    """One consolidated safetensors file, evaluated, that loads into the trained model."""
    assert sorted(p.name for p in final.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(final.glob("*.distcp")) and not list(final.glob("*index.json"))
    assert "num_samples" in json.loads((final / "eval_results.json").read_text())  # evaluated on the full model
    loaded = CosmoForConditionalGeneration.from_pretrained(final)
    _assert_close({k: v for k, v in loaded.state_dict().items() if k in trained}, trained, "loaded weight")


def test_fsdp2_on_two_cpu_processes_matches_one_process_resumes_and_consolidates(setup, reference):
    fsdp, resumed = setup.root / "fsdp", setup.root / "resumed"
    _launch(setup, "fsdp.yaml", fsdp)

    # the run was sharded: accelerate's FSDP checkpoint, one DCP file per process, no full model file
    sharded = fsdp / f"checkpoint-{SAVE_AT}"
    assert sorted(p.name for p in (sharded / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp",
                                                                                          "__1_0.distcp"]
    assert not (sharded / "model.safetensors").exists() and (sharded / "optimizer_0" / ".metadata").exists()

    # (a) the losses of every step and the weights after the last one equal one process with the global batch
    _assert_close(_losses(fsdp / f"checkpoint-{STEPS}"), reference.losses, "loss")
    trained = reference.weights
    _assert_close(load_file(fsdp / "final" / "model.safetensors"), trained, "weight")
    set_seed(0)  # the script's seed: the initial weights, to show that 4 steps at lr 1e-3 moved them beyond 1e-5
    initial = CosmoForConditionalGeneration(_tiny_config()).state_dict()
    assert max(float((trained[k] - initial[k]).abs().max()) for k in trained) > 1e-3

    # (b) a new run resumes the sharded checkpoint of step 2 and continues with the uninterrupted run's losses
    resumed.mkdir()
    shutil.copytree(sharded, resumed / sharded.name)
    _launch(setup, "fsdp.yaml", resumed, "--resume_from_checkpoint", "last", "--final_evaluation", "false")
    after = {step: v for step, v in _losses(resumed / f"checkpoint-{STEPS}").items() if step > SAVE_AT}
    assert sorted(after) == list(range(SAVE_AT + 1, STEPS + 1))
    _assert_close(after, {step: reference.losses[step] for step in after}, "loss after resume")

    # (c) the Hub folder holds one consolidated safetensors file that loads into the trained model
    _check_final_folder(fsdp / "final", trained)


def test_deepspeed_zero2_on_two_cpu_processes_matches_one_process(setup, reference):
    pytest.importorskip("deepspeed")  # DeepSpeed's CPU accelerator: gloo, no compiled ops needed
    out = setup.root / "zero2"
    _launch(setup, "deepspeed_zero2.yaml", out)
    assert (out / f"checkpoint-{SAVE_AT}" / f"global_step{SAVE_AT}").is_dir()  # DeepSpeed's own checkpoint
    _assert_close(_losses(out / f"checkpoint-{STEPS}"), reference.losses, "loss")
    _assert_close(load_file(out / "final" / "model.safetensors"), reference.weights, "weight")
    _check_final_folder(out / "final", reference.weights)


def test_sharding_configs_parse_into_accelerate_plugins():
    # what `accelerate launch` reads from the two yaml files, and the DeepSpeed config accelerate derives from it
    fsdp = ClusterConfig.from_yaml_file(str(ROOT / "examples" / "configs" / "fsdp.yaml"))
    assert (fsdp.distributed_type, fsdp.mixed_precision) == ("FSDP", "bf16")
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    # the wrapped classes are among the model's _no_split_modules (its own blocks and its towers' layers)
    assert set(fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")) <= set(
        CosmoForConditionalGeneration(_tiny_config())._no_split_modules)
    zero = ClusterConfig.from_yaml_file(str(ROOT / "examples" / "configs" / "deepspeed_zero2.yaml"))
    assert (zero.distributed_type, zero.mixed_precision) == ("DEEPSPEED", "bf16")
    fields = zero.deepspeed_config
    plugin = DeepSpeedPlugin(**{k: fields[k] for k in (
        "zero_stage", "gradient_accumulation_steps", "gradient_clipping", "offload_optimizer_device",
        "offload_param_device", "zero3_init_flag")})
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 1.0
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled from the Trainer's arguments


def test_a_launch_that_did_not_distribute_is_an_error(monkeypatch):
    # accelerate launch with an FSDP config on a machine without a GPU: 2 processes, each alone (world_size 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RuntimeError, match="launched 2 processes.*FSDP.*ddp_cpu.yaml"):
        check_launch(SimpleNamespace(world_size=1))
    check_launch(SimpleNamespace(world_size=2))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(SimpleNamespace(world_size=1))
