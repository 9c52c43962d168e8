"""examples/evaluate.py: every task on a tiny random model and tiny embedded corpora, and the k-shot prompts."""

import json

import pytest
import torch

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.presets import get_config, get_processor
from cosmo_vl.processing import load_embedded_dataset, zero_shot_classes, zero_shot_prompts

from script_loading import load_script

SIZES = {"num_train": 6, "num_test": 4}


evaluate = load_script("examples/evaluate.py", "evaluate_example")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cosmo_eval_model")
    CosmoForConditionalGeneration(get_config("cosmo-tiny")).eval().save_pretrained(path)
    get_processor("cosmo-tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cosmo_eval_data")


def _run(model_dir, cache_dir, tmp_path, dataset, task, *extra):
    out = tmp_path / f"{task}.json"
    argv = ["--model", str(model_dir), "--dataset", dataset, "--task", task, "--batch_size", "2",
            "--max_new_tokens", "3", "--cache_dir", str(cache_dir), "--num_train", str(SIZES["num_train"]),
            "--num_test", str(SIZES["num_test"]), "--output", str(out), "--device", "cpu", *extra]
    assert evaluate.main(argv) == 0
    return json.loads(out.read_text())


def _in_unit_range(results, keys):
    for key in keys:
        assert isinstance(results[key], float) and 0.0 <= results[key] <= 1.0, (key, results[key])


def test_build_prompt_two_shots():
    demos = [{"text": "a red circle"}, {"text": "two blue stars"}]
    assert evaluate.build_prompt("captioning", demos) == (
        "<visual>Output:a red circle<|endofchunk|><visual>Output:two blue stars<|endofchunk|><visual>Output:"
    )
    assert evaluate.build_prompt("video-captioning", []) == "<visual>Output:"
    qa = [{"question": "what color is it?", "answer": "red"}, {"question": "how many?", "answer": ["two", "2"]}]
    assert evaluate.build_prompt("vqa", qa, "what shape is it?") == (
        "<visual>Question:what color is it? Short answer:red<|endofchunk|>"
        "<visual>Question:how many? Short answer:two<|endofchunk|>"
        "<visual>Question:what shape is it? Short answer:"
    )
    with pytest.raises(ValueError):
        evaluate.build_prompt("retrieval", demos)


def test_demo_draw_is_seeded_and_distinct():
    first = evaluate.sample_demo_indices(5, 6, 2, seed=3)
    assert first == evaluate.sample_demo_indices(5, 6, 2, seed=3)
    assert all(len(ids) == 2 and len(set(ids)) == 2 and all(0 <= i < 6 for i in ids) for ids in first)
    assert evaluate.sample_demo_indices(3, 0, 0) == [[], [], []]
    with pytest.raises(ValueError):
        evaluate.sample_demo_indices(1, 1, 2)


def test_captioning_two_shots(model_dir, cache_dir, tmp_path):
    results = _run(model_dir, cache_dir, tmp_path, "shapes-captions", "captioning", "--shots", "2")
    assert results["task"] == "captioning" and results["shots"] == 2 and results["num_samples"] == SIZES["num_test"]
    _in_unit_range(results, ["bleu4", "exact_match"])
    assert results["cider"] >= 0.0
    train = load_embedded_dataset("shapes-captions", cache_dir=cache_dir, **SIZES)["train"]["text"]
    for example in results["examples"]:
        prompt = example["prompt"]
        assert prompt.count("<visual>") == 3 and prompt.count("<|endofchunk|>") == 2 and prompt.endswith(
            "<visual>Output:")
        demos = [chunk.split("Output:", 1)[1] for chunk in prompt.split("<|endofchunk|>")[:-1]]
        assert all(d in train for d in demos)


def test_vqa_two_shots(model_dir, cache_dir, tmp_path):
    results = _run(model_dir, cache_dir, tmp_path, "shapes-vqa", "vqa", "--shots", "2", "--max_samples", "3")
    assert results["num_samples"] == 3
    _in_unit_range(results, ["vqa_accuracy", "vqa_exact_match"])
    assert "exact_match" not in results  # the card would list it under captioning
    prompt = results["examples"][0]["prompt"]
    assert prompt.count("Short answer:") == 3 and prompt.endswith(f"Question:{results['examples'][0]['question']}"
                                                                  " Short answer:")


def test_retrieval(model_dir, cache_dir, tmp_path):
    results = _run(model_dir, cache_dir, tmp_path, "shapes-captions", "retrieval")
    _in_unit_range(results, ["i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"])
    assert results["i2t_r1"] <= results["i2t_r5"] and results["t2i_r1"] <= results["t2i_r5"]


def test_zero_shot_classification(model_dir, cache_dir, tmp_path):
    results = _run(model_dir, cache_dir, tmp_path, "shapes-captions", "zero-shot-classification",
                   "--class_prompts", "names")
    _in_unit_range(results, ["zero_shot_top1"])
    assert results["num_classes"] == len(zero_shot_classes("shapes-captions")) and results["num_labelled"] >= 1


def test_class_prompt_styles():
    ensemble, reduce = evaluate.class_prompts(None, "shapes-captions", "{}")
    assert reduce == "max" and ensemble == zero_shot_prompts("shapes-captions")
    names, reduce = evaluate.class_prompts(None, "shapes-captions", "{}", "names")
    assert reduce == "mean" and names == zero_shot_classes("shapes-captions")


def test_video_captioning_and_merge(model_dir, cache_dir, tmp_path):
    pytest.importorskip("decord")
    (tmp_path / "video-captioning.json").write_text(json.dumps({"vqa_accuracy": 0.5}))
    results = _run(model_dir, cache_dir, tmp_path, "shapes-videos", "video-captioning", "--shots", "1",
                   "--num_frames", "4", "--merge")
    _in_unit_range(results, ["bleu4", "exact_match"])
    assert results["cider"] >= 0.0 and results["vqa_accuracy"] == 0.5  # merged into the existing file
    assert results["examples"][0]["prompt"].count("<visual>") == 2


def test_metric_keys_feed_the_model_card(model_dir, cache_dir, tmp_path):
    from cosmo_vl.hub_cards import eval_results_from_json

    results = _run(model_dir, cache_dir, tmp_path, "shapes-captions", "captioning", "--max_samples", "2")
    names = {r.metric_name for r in eval_results_from_json(results, "m", "shapes-captions", "cosmo-vl/embedded")}
    assert names == {"cider", "bleu4", "exact_match"}


def test_shots_rejected_for_embedding_tasks():
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "m", "--dataset", "d", "--task", "retrieval", "--shots", "2"])
