"""examples/pretrain.py --model_type simvlg / blip2 [--pformer]: end to end in-process on tiny data, results and
folders that load back."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    HfArgumentParser,
)

import cosmo_vl
from cosmo_vl.modeling import PFormerModel, SimVlgConfig, SimVlgForConditionalGeneration
from cosmo_vl.presets import get_config, get_processor
from cosmo_vl.processing import CosmoProcessor, load_default_tokenizer, load_embedded_dataset
from cosmo_vl.processing.synthetic import EMBEDDED_DATASETS
from cosmo_vl.trainers import CosmoTrainingArguments
from cosmo_vl.trainers.blip2_recipe import Blip2PairCollator
from cosmo_vl.trainers.recipes import RecipeArguments, apply_defaults

from script_loading import load_script

CAPTION_KEYS = {"num_samples", "cider", "exact_match", "bleu4", "examples"}


pretrain = load_script("examples/pretrain.py", "pretrain_example")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_data")
    load_embedded_dataset("shapes-captions", cache_dir=str(root / "cache"), num_train=24, num_test=4).save_to_disk(
        str(root / "captions"))
    return root / "captions"


@pytest.fixture()
def no_remote_code_registration():
    """`enable_remote_code` registers classes process-wide; undo it after the test."""
    yield
    for cls in (SimVlgForConditionalGeneration, SimVlgConfig, CosmoProcessor):
        cls._auto_class = None


def _run(tmp_path, dataset, *extra) -> tuple[dict, Path]:
    out = tmp_path / "out"
    argv = ["--dataset", str(dataset), "--output_dir", str(out), "--max_eval_samples", "4",
            "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", "1", "--disable_tqdm", "true", "--warmup_steps", "0", *extra]
    assert pretrain.main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert json.loads((out / "final" / "eval_results.json").read_text()) == results
    return results, out / "final"


def _check_caption_results(results: dict, splits=("test", "test_iid")) -> None:
    for split in splits:
        for key in CAPTION_KEYS - {"examples"}:
            assert isinstance(results[f"{split}/{key}"], (int, float)), (split, key)
        assert 0.0 <= results[f"{split}/exact_match"] <= 1.0
        assert len(results[f"{split}/examples"]) == 4
    assert CAPTION_KEYS <= set(results)  # the first split's metrics, unprefixed (what the card reads)
    assert set(results["skipped_tasks"]) == {"zero_shot_classification", "retrieval"}
    assert not any(key.startswith(("zero_shot", "i2t", "t2i")) for key in results)


def _images():
    return [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (0, 90, 200))]


def test_architecture_defaults_replace_only_untouched_cosmo_defaults():
    parser = HfArgumentParser((pretrain.ScriptArguments, RecipeArguments, CosmoTrainingArguments))
    parser.set_defaults(**pretrain.DEFAULTS)
    args, _, training_args = parser.parse_args_into_dataclasses(args=["--model_type", "blip2"])
    training_args = apply_defaults(args, training_args, pretrain.DEFAULTS)
    assert (args.config, args.repo_id) == ("blip2-tiny", "cosmo-vl/blip2-tiny-shapes")
    assert training_args.output_dir == "outputs/blip2-tiny" and training_args.learning_rate == 3e-4
    assert training_args.max_steps == pretrain.DEFAULTS["max_steps"]
    argv = ["--model_type", "simvlg", "--config", "simvlg-tiny", "--output_dir", "mine", "--learning_rate", "2e-3"]
    args, _, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args = apply_defaults(args, training_args, pretrain.DEFAULTS)
    assert training_args.output_dir == "mine" and training_args.learning_rate == 2e-3


def test_single_cpu_process_uses_every_core(monkeypatch):
    """`accelerate launch` without a GPU exports OMP_NUM_THREADS=1; the script gives a lone CPU process all cores."""
    before = torch.get_num_threads()
    monkeypatch.setattr(pretrain.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    try:
        torch.set_num_threads(1)
        single = SimpleNamespace(device=torch.device("cpu"), world_size=1)
        pretrain.use_cpu_threads(None, single)
        assert torch.get_num_threads() == 3
        pretrain.use_cpu_threads(2, single)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        pretrain.use_cpu_threads(None, SimpleNamespace(device=torch.device("cpu"), world_size=2))  # DDP: kept
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------- SimVLG
def test_simvlg_end_to_end_and_folder_loads(tmp_path, data_dir, no_remote_code_registration):
    results, final = _run(tmp_path, data_dir, "--model_type", "simvlg", "--max_steps", "3")
    _check_caption_results(results)
    card = (final / "README.md").read_text()
    assert "SimVLG" in card and "simvlg" in card and "cosmo-vl/simvlg-tiny-shapes" in card
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "simvlg"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_simvlg.SimVlgForConditionalGeneration"
    assert (final / "model.safetensors").exists() and (final / "modeling_simvlg.py").exists()

    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final)
    assert isinstance(model, SimVlgForConditionalGeneration) and isinstance(processor, CosmoProcessor)
    batch = processor(text=["<visual>", "<visual>"], images=[[image] for image in _images()], return_tensors="pt")
    torch.save(dict(batch), tmp_path / "inputs.pt")
    with torch.no_grad():
        logits = model(**batch).logits
    # The same folder as remote code, in a process where cosmo_vl cannot be imported.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["cosmo_vl"] = None
        import torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained({str(final)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model)
        with torch.no_grad():
            torch.save(model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), logits)


def test_simvlg_video_mixed_in_and_merge_schedule(tmp_path, data_dir, monkeypatch, no_remote_code_registration):
    monkeypatch.setenv("COSMO_VL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(EMBEDDED_DATASETS, "shapes-videos", {**EMBEDDED_DATASETS["shapes-videos"], "num_train": 8,
                                                             "num_test": 4, "num_frames": 2})
    results, final = _run(tmp_path, f"{data_dir}:1,shapes-videos:1", "--model_type", "simvlg", "--max_steps", "4",
                          "--num_frames", "2", "--merge_schedule", "0:1:decreasing")
    _check_caption_results(results, splits=("test", "test_iid", "video_test"))
    # The schedule's final per-layer r (decreasing profile: 2r -> 0 over the 2 connector layers) is what is saved.
    assert json.loads((final / "config.json").read_text())["merge_r"] == [6, 0]


# ------------------------------------------------------------------------------------------------------- BLIP-2
def test_blip2_collator_labels():
    processor = get_processor("blip2-tiny")
    rows = [{"image": image, "text": text} for image, text in zip(_images(), ["a red square", "two blue stars"])]
    batch = Blip2PairCollator(processor, max_length=32)(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    eos = processor.tokenizer.eos_token_id
    assert (ids[:, 0] == processor.tokenizer.bos_token_id).all() and (labels[:, 0] == -100).all()
    assert all(ids[i, mask[i].sum() - 1] == eos for i in range(2))  # every caption ends with EOS
    assert (labels[mask == 0] == -100).all() and batch["pixel_values"].shape == (2, 3, 32, 32)
    assert processor.tokenizer.decode(ids[0][mask[0].bool()], skip_special_tokens=True).strip() == "a red square"


def test_blip2_two_stages_end_to_end(tmp_path, data_dir, capsys):
    results, final = _run(tmp_path, data_dir, "--model_type", "blip2", "--max_steps", "4")
    _check_caption_results(results)
    assert results["stage1_steps"] == 2 and results["stage2_steps"] == 2 and results["pformer"] is None
    logs = capsys.readouterr().out
    assert "'itm_loss'" in logs and "'contrastive_loss'" in logs and "'alignment_loss'" not in logs
    assert (final.parent / "stage1" / "final" / "blip2_stage1_heads.safetensors").exists()
    assert "BLIP-2" in (final / "README.md").read_text()

    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final)
    assert isinstance(model, Blip2ForConditionalGeneration) and isinstance(processor, Blip2Processor)
    batch = processor(images=_images(), text=["", ""], return_tensors="pt")
    assert (batch["input_ids"][:, :8] == model.config.image_token_index).all()
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= batch["input_ids"].shape[1] + 3


def test_blip2_resume_continues_stage2_from_its_checkpoint(tmp_path, data_dir):
    """Stage-2 checkpoints hold the tied LM weights once (safetensors save_model); resuming loads them back."""
    extra = ["--model_type", "blip2", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    first, final = _run(tmp_path, data_dir, *extra)
    assert (final.parent / "stage2" / "checkpoint-2" / "model.safetensors").exists()
    again, _ = _run(tmp_path, data_dir, *extra, "--resume_from_checkpoint", "last")
    for key in ("test/examples", "test_iid/examples", "cider", "exact_match"):
        assert again[key] == first[key], key


def test_blip2_with_pformer(tmp_path, data_dir, capsys):
    torch.manual_seed(0)
    pformer_dir = tmp_path / "pformer"
    pformer = PFormerModel(get_config("pformer-tiny", num_prompts=4))
    pformer.save_pretrained(pformer_dir)  # what examples/pretrain_pformer.py writes: model + tokenizer
    load_default_tokenizer().save_pretrained(pformer_dir)
    results, final = _run(tmp_path, data_dir, "--model_type", "blip2", "--max_steps", "4", "--stage1_steps", "1",
                          "--pformer", str(pformer_dir), "--freeze_language_model", "true")
    _check_caption_results(results)
    assert results["stage1_steps"] == 1 and results["stage2_steps"] == 3 and results["pformer"] == str(pformer_dir)
    assert "'alignment_loss'" in capsys.readouterr().out
    model = Blip2ForConditionalGeneration.from_pretrained(final)
    # The P-Former fixes the number of queries and the stage-2 LM (its own, frozen here, grown by `<image>`).
    assert model.config.num_query_tokens == 4 and model.config.text_config.hidden_size == 64
    lm_weight = pformer.language_model.get_input_embeddings().weight
    torch.testing.assert_close(model.language_model.get_input_embeddings().weight[: lm_weight.shape[0]], lm_weight)
