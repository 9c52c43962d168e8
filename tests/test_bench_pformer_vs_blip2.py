"""bench/pformer_vs_blip2.py end to end at a smoke size: both arms train and are evaluated, JSON keys present."""

import json

import pytest
import torch

from script_loading import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/pformer_vs_blip2.py", "bench_pformer_vs_blip2")


def test_batches_and_greedy_padding(bench):
    steps = bench.batches(10, 4, 5, seed=0)
    assert len(steps) == 5 and all(len(b) == 4 for b in steps)
    assert sorted(steps[0] + steps[1]) == sorted(set(steps[0] + steps[1]))  # no repeats within an epoch

    from transformers import LlamaConfig, LlamaForCausalLM

    from cosmo_vl.processing import load_default_tokenizer

    texts = bench.Texts(load_default_tokenizer(), 32)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(texts.tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)).eval()
    prompt = texts.ids("<s>a red circle")
    # Left padding and mask-based positions: a row decodes the same alone and beside a longer row.
    alone = bench.greedy(lm, [[prompt]], texts, 5)
    batched = bench.greedy(lm, [[prompt], [texts.ids("<s>three small blue stars on the left")]], texts, 5)
    assert batched[0] == alone[0]


def test_quick_run_writes_both_arms(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COSMO_VL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pformer_vs_blip2.json"
    assert bench.main(["--output", str(out), "--quick", "--steps", "2"]) == 0
    data = json.loads(out.read_text())
    assert data["steps"] == 2 and data["benchmark"] == "pformer_vs_blip2"
    assert list(data["arms"]) == ["blip2", "pformer+blip2"]
    for arm, entry in data["arms"].items():
        assert entry["stages"]["stage1"]["steps"] == entry["stages"]["stage2"]["steps"] == 2
        for split in ("test", "test_iid"):
            assert {"exact_match", "cider", "bleu4"} <= set(entry["captioning"][split])
            assert "accuracy" in entry["vqa_zero_shot"][split] and "accuracy" in entry["vqa_2shot"][split]
        assert ("alignment_loss" in entry["stages"]["stage2"]["final"]) == (arm == "pformer+blip2")
    assert data["arms"]["pformer+blip2"]["alignment_weights"] == {"stage1": 10.0, "stage2": 100.0}
    assert {"no_image", "caption_context"} <= set(data["vqa_brackets"]["test"])
    assert "alignment_mse_test/blip2" in data["diagnostics"] and "pformer_minus_blip2" in data["summary"]
    assert {"lm", "pformer"} <= set(data["stages"])
    assert "| pformer+blip2 | test |" in capsys.readouterr().out
