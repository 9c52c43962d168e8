"""examples/publish.py: the dry-run folder is loadable as remote code without the package and carries a parsable card."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.presets import get_config, get_processor

from script_loading import load_script

EVAL_RESULTS = {"task": "captioning", "dataset": "shapes-captions", "cider": 0.42, "bleu4": 0.1,
                "i2t_r1": 0.25, "examples": [{"prediction": "a red circle"}]}


publish = load_script("examples/publish.py", "publish_example")


def _save_tiny(path, eval_results=None):
    torch.manual_seed(0)
    CosmoForConditionalGeneration(get_config("cosmo-tiny")).eval().save_pretrained(path)
    get_processor("cosmo-tiny").save_pretrained(path)
    if eval_results is not None:
        (path / "eval_results.json").write_text(json.dumps(eval_results))
    return path


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    model_dir = _save_tiny(tmp_path_factory.mktemp("cosmo_publish_model"), EVAL_RESULTS)
    assert publish.main(["--model", str(model_dir), "--repo_id", "cosmo-vl/cosmo-tiny-test"]) == 0
    return model_dir / "publish"


def test_dry_run_folder_contents(staged, capsys):
    names = {p.name for p in staged.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "eval_results.json", "modeling_cosmo.py",
            "configuration_cosmo.py", "processor_config.json"} <= names
    assert any(n.startswith("processing_") and n.endswith(".py") for n in names)
    assert any(n.startswith("tokenizer") for n in names)
    auto_map = json.loads((staged / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_cosmo.CosmoForConditionalGeneration"
    assert "AutoProcessor" in json.loads((staged / "processor_config.json").read_text())["auto_map"]
    # the listing names every staged file with its size
    listed = publish.list_files(staged)
    assert {n for n, _ in listed} == names and all(size > 0 for _, size in listed)


def test_card_metadata_parses_back(staged):
    card = ModelCard.load(staged / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-text-to-text"
    assert "model-index" in data
    metrics = {m["name"]: m["value"] for r in data["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics == {"cider": 0.42, "bleu4": 0.1, "i2t_r1": 0.25}
    assert data["model-index"][0]["results"][0]["dataset"]["name"] == "shapes-captions"


def test_card_without_eval_results(tmp_path):
    model_dir = _save_tiny(tmp_path / "model")
    out = publish.stage(model_dir, "org/name", tmp_path / "staged")
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["library_name"] == "transformers" and "model-index" not in data
    assert not (out / "eval_results.json").exists()
    with pytest.raises(FileExistsError):  # never mixes with a previous staging
        publish.stage(model_dir, "org/name", tmp_path / "staged")
    publish.stage(model_dir, "org/name", tmp_path / "staged", overwrite=True)


def test_upload_uses_the_staged_folder(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(publish, "create_repo", lambda repo_id, **kw: calls.setdefault("create", (repo_id, kw)))
    monkeypatch.setattr(publish, "upload_folder", lambda **kw: calls.setdefault("upload", kw) and "url")
    model_dir = _save_tiny(tmp_path / "model")
    argv = ["--model", str(model_dir), "--repo_id", "org/name", "--no-dry_run", "--private",
            "--output_dir", str(tmp_path / "out")]
    assert publish.main(argv) == 0
    assert calls["create"] == ("org/name", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls["upload"]["folder_path"] == str(tmp_path / "out") and calls["upload"]["repo_id"] == "org/name"
    assert publish.parse_args(["--model", "m", "--repo_id", "o/n"]).dry_run is True


def test_staged_folder_loads_as_remote_code_without_package(staged, tmp_path):
    image_path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(image_path)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["cosmo_vl"] = None
        from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
        from PIL import Image
        model = AutoModelForImageTextToText.from_pretrained({str(staged)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(staged)!r}, trust_remote_code=True)
        gen = pipeline("image-text-to-text", model={str(staged)!r}, trust_remote_code=True)
        text = gen(images=Image.open({str(image_path)!r}), text="<visual>Output:", max_new_tokens=3)
        print(json.dumps({{"model": type(model).__module__, "processor": type(processor).__module__,
                          "text": text[0]["generated_text"]}}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["model"].startswith("transformers_modules.") and got["processor"].startswith("transformers_modules.")
    assert got["text"].startswith("<visual>Output:")
