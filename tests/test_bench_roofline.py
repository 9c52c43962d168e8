"""bench/roofline.py's Trainer path, largest-batch search and time split, and bench/generation.py's measurement, run
at cosmo-tiny size on a CPU (speed itself is not asserted)."""

import json
import sys

import pytest
import torch
from script_loading import ROOT, load_script

sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their sibling modules

import _generation  # noqa: E402
import _roofline_plan  # noqa: E402
import _trainer_path  # noqa: E402

B, T = 2, 24
BARE = {"precision": "fp32", "optim": "adamw_torch"}
TRAINER = {"precision": "autocast", "optim": "adamw_torch_fused"}  # bf16=True: what the GPU run measures


@pytest.fixture(scope="module")
def measured():
    return _roofline_plan.measure_config("tiny", "cpu", [(B, T)], 1e11, [BARE], [TRAINER], warmup=0, iters=1,
                                         split=True, log=lambda line: None)


def test_trainer_path_counts_the_bare_loops_flops_and_times_its_steps(measured):
    bare, trainer = measured["rows"]
    assert (bare["path"], trainer["path"]) == ("bare", "trainer")
    config = measured["models"].get("fp32").config
    hidden, vocab = config.text_config.hidden_size, config.text_config.vocab_size
    # Same model, same batch: the Trainer's counted step is the bare step, bf16 autocast or not.
    assert trainer["train_step_flops"] == bare["train_step_flops"] > 0 and trainer["flops_equal_to_bare"]
    assert bare["flops"]["forward_by_top_module"]["lm_head"] == 2 * B * T * hidden * vocab
    assert bare["flops"]["forward"] < bare["train_step_flops"]
    # The model's attention really runs through SDPA, forward and backward.
    kernels = trainer["flops"]["attention_kernels"]
    assert any("scaled_dot_product" in k and not k.endswith("backward") for k in kernels)
    assert any("scaled_dot_product" in k and k.endswith("backward") for k in kernels)
    assert trainer["mixed_precision"] == "bf16" and trainer["optimizer_fused"]
    for row in (bare, trainer):
        assert len(row["step_times_s"]) == 1 and row["step_time_s"] == row["step_times_s"][0] > 0
        assert row["fraction_of_peak"] == pytest.approx(row["train_step_flops"] / row["step_time_s"] / 1e11)
    summary = measured["summary"][0]
    assert summary["shape"] == f"{B}x{T}" and summary["target_fraction"] is None
    assert summary["trainer"]["reference_fraction"] == trainer["fraction_of_peak"]
    json.dumps(measured["rows"])  # the rows go into the JSON as they are


def test_time_split_times_the_parts_at_the_step_shapes(measured):
    split = measured["time_split"][f"{B}x{T}"]
    model = measured["models"].get("fp32")
    text = model.config.text_config
    head = split["lm_head_loss"]
    assert head["shape"] == [B * T, text.hidden_size, text.vocab_size] and head["time_s"] > 0
    matmuls = 3 if head["head_requires_grad"] else 2  # forward, input gradient (, weight gradient)
    assert head["matmul_flops"] == matmuls * 2 * B * T * text.hidden_size * text.vocab_size
    opt = split["optimizer_step"]
    assert opt["fused"] and opt["parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert opt["step_time_s"] > 0 and opt["clip_grad_norm_time_s"] > 0
    attn = split["attention"]
    assert attn["shape"] == [B, text.num_attention_heads, T, text.hidden_size // text.num_attention_heads]
    assert attn["backward_layers"] == text.num_hidden_layers  # cosmo-tiny trains its LM: every layer back-propagates
    backward_s = max(attn["forward_backward_s"] - attn["forward_s"], 0)
    assert attn["estimated_step_s"] == pytest.approx(
        attn["layers"] * attn["forward_s"] + attn["backward_layers"] * backward_s)
    for key, share in split["share_of_step"].items():
        assert share > 0
    assert split["share_of_step"]["lm_head_loss"] == pytest.approx(head["time_s"] / split["step_time_s"])
    # The shared model comes back as it was lent: plain forward, no gradients, no checkpointing.
    assert "forward" not in model.__dict__ and all(p.grad is None for p in model.parameters())


def test_largest_batch_doubles_then_bisects_and_stops_on_time():
    fits_up_to, failures = 37, []

    def attempt(batch):
        if batch > fits_up_to:
            raise torch.OutOfMemoryError("fake")
        return {"peak_allocated_bytes": batch * 10}

    out = _trainer_path.largest_batch(attempt, start=1, max_s=60, on_failure=lambda: failures.append(1))
    assert out["batch"] == fits_up_to and out["fit"]["peak_allocated_bytes"] == 370 and out["stopped"] == "converged"
    assert [t["batch"] for t in out["tries"]] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert len(failures) == sum(not t["fits"] for t in out["tries"]) and out["smallest_failure"] == 38
    assert _trainer_path.largest_batch(attempt, start=64, max_s=60)["batch"] == 37  # a first failure bisects down
    capped = _trainer_path.largest_batch(attempt, start=3, max_batch=10, max_s=60)
    assert capped["batch"] == 10 and capped["stopped"] == "max_batch"
    timed_out = _trainer_path.largest_batch(attempt, max_s=-1)
    assert timed_out["batch"] is None and timed_out["tries"] == [] and timed_out["stopped"] == "time limit"


def test_memory_search_trains_with_checkpointing_and_gives_the_model_back(measured):
    model = measured["models"].get("fp32")
    config = model.config
    out = _trainer_path.trainer_memory_search(model, config, 32, 16, "cpu", BARE, gradient_checkpointing=True,
                                              start=2, max_s=60, max_batch=2, steps=1)
    assert out["batch"] == 2 and out["stopped"] == "max_batch" and out["gradient_checkpointing"]
    assert out["fit"]["step_time_s"] > 0 and out["peak_allocated_bytes"] is None  # no CUDA allocator here
    assert not _trainer_path.checkpointing_on(model) and all(p.grad is None for p in model.parameters())


def test_memory_runs_both_searches_the_second_from_the_first_result(measured, monkeypatch):
    calls = []

    def search(model, config, image, seq_len, device, variant, checkpointing, start, max_s, max_batch, steps):
        calls.append((checkpointing, start))
        batch = 24 if checkpointing else 6
        return {"batch": batch, "peak_allocated_bytes": batch, "stopped": "converged", "search_s": 0.0, "tries": []}

    monkeypatch.setattr(_roofline_plan, "trainer_memory_search", search)
    out = _roofline_plan.memory("tiny", "cpu", 16, BARE, start=2, max_s=60, models=measured["models"],
                                log=lambda line: None)
    assert calls == [(False, 2), (True, 6)]
    assert (out["without_checkpointing"]["batch"], out["with_checkpointing"]["batch"]) == (6, 24)


def test_generation_times_cosmo_and_the_bare_lm_with_the_same_weights(tmp_path):
    pair = _generation.build_pair("cosmo-tiny", "cpu", torch.float32)
    lm, cosmo = dict(pair)["lm_only"], dict(pair)["cosmo"]
    assert torch.equal(lm.get_input_embeddings().weight, cosmo.get_input_embeddings().weight)
    assert torch.equal(lm.model.layers[-1].mlp.down_proj.weight,
                       cosmo.model.language_model.layers[-1].layer.mlp.down_proj.weight)
    ids, pixels = _generation.few_shot_prompt(cosmo.config, 32, num_media=3, batch=2)
    assert ((ids == cosmo.config.media_token_id).sum(-1) == 3).all() and pixels.shape == (2, 3, 1, 3, 32, 32)
    assert ((ids == cosmo.config.endofchunk_token_id).sum(-1) == 2).all()

    out = _generation.generation_benchmark("tiny", "cpu", torch.float32, batches=(2,), images=(1,), new_tokens=3,
                                           warmup=0, iters=1, models=pair, log=lambda line: None)
    r = out["results"]["1img/batch2"]
    assert r["new_tokens"] == {"cosmo": 3, "lm_only": 3}
    assert set(r["time_s"]) == {"cosmo", "lm_only", "media_encoding"} and min(r["time_s"].values()) > 0
    assert r["tokens_per_s"]["cosmo"] == 2 * 3 / r["time_s"]["cosmo"]
    assert r["cosmo_over_lm_tokens_per_s"] == pytest.approx(r["time_s"]["lm_only"] / r["time_s"]["cosmo"])
    assert out["preset"] == "cosmo-tiny" and out["attn_implementation"]["text"] == "sdpa"

    report = load_script("bench/report.py", "bench_report")
    markdown, _ = report.render([_write(tmp_path, "generation.json", {"benchmark": "generation", **out})], tmp_path)
    assert f"| 1img/batch2 | {r['tokens_per_s']['cosmo']:.3f} | {r['tokens_per_s']['lm_only']:.3f} |" in markdown


def test_report_renders_every_run_and_the_memory_search(measured, tmp_path):
    bare, trainer = measured["rows"]
    memory = {"seq_len": 16, "batch": 6, "peak_allocated_bytes": 3 * 2**30, "stopped": "converged"}
    data = {"benchmark": "roofline", "device": "cpu", "peak_matmul": {"flops_per_s": 1e11, "dtype": "f32", "n": 8},
            "configs": [bare], "runs": {"tiny": measured["rows"]},
            "memory": {"tiny": {"without_checkpointing": memory, "with_checkpointing": {**memory, "batch": 24}}}}
    report = load_script("bench/report.py", "bench_report")
    markdown, _ = report.render([_write(tmp_path, "roofline.json", data)], tmp_path / "out")
    assert f"| tiny | {B}x{T} | trainer | {trainer['variant']} | {trainer['step_time_s']:.3f} |" in markdown
    assert "| tiny | with | 16 | 24 | 3.000 | converged |" in markdown


def _write(folder, name, data):
    path = folder / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("script", ["bench/roofline.py", "bench/generation.py"])
def test_scripts_write_a_skip_record_without_cuda(script, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = load_script(script, "bench_" + script.split("/")[1][:-3])
    assert module.main(["--output", str(tmp_path / "out.json"), "--device", "cuda"]) == 0
    assert "skipped" in json.loads((tmp_path / "out.json").read_text())
