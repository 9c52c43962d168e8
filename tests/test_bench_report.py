"""The benchmark report renderer on small synthetic JSON files (no benchmark is run)."""

import json

import pytest

from script_loading import load_script


@pytest.fixture(scope="module")
def report():
    return load_script("bench/report.py", "bench_report")


def _train(step, peak, trainable, total):
    return {"step_time_s": step, "peak_rss_delta_bytes": peak, "params": {"trainable": trainable, "total": total}}


VS = {
    "train_step_time_ratio": 0.5,
    "trainable_params_ratio": 0.45,
    "peak_memory_ratio": 0.8,
    "generate_tokens_per_s_ratio": 2.5,
    "generate_tokens_per_s_ratio_by_images": {"1": 2.5, "4": 3.1},
    "train_step_time_ratio_interval2": 0.4,
    "trainable_params_ratio_interval2": 0.3,
    "peak_memory_ratio_interval2": 0.7,
    "generate_tokens_per_s_ratio_interval2": 2.7,
    "generate_tokens_per_s_ratio_by_images_interval2": {"1": 2.7, "4": 3.3},
    "generate_tokens_per_s_ratio_batch8": 1.8,
    "generate_tokens_per_s_ratio_batch8_by_images": {"1": 1.8, "4": 2.2},
    "generate_tokens_per_s_ratio_batch8_interval2": 1.9,
    "generate_tokens_per_s_ratio_batch8_by_images_interval2": {"1": 1.9, "4": 2.4},
    "generate_ceiling_ratio": 3.2,
    "generate_ceiling_ratio_by_images": {"1": 3.2, "4": 4.5},
    "generate_ceiling_with_encoding_ratio_by_images": {"1": 2.9, "4": 1.8},
    "trainable_params_ratio_released_2b": 0.4985,
    "trainable_params_ratio_released_2b_interval2": 0.2881,
    "trainable_params_ratio_released_2b_interval2_compress2": 0.183,
    "ratios_from_fastest_repeat": {"generate_tokens_per_s_ratio_batch8_4img_interval2": 2.5},
    "targets": {
        "train_step_time_ratio": {"target": "<= 0.6", "measured": 0.5, "met": True},
        "trainable_params_ratio": {"target": "<= 0.4", "measured": 0.45, "met": False},
        "generate_tokens_per_s_ratio": {"target": ">= 2.0", "measured": 2.5, "met": True},
        "train_step_time_ratio_interval2": {"target": "<= 0.6", "measured": 0.4, "met": True},
        "trainable_params_ratio_interval2": {"target": "<= 0.4", "measured": 0.3, "met": True},
        "generate_tokens_per_s_ratio_interval2": {"target": ">= 2.0", "measured": 2.7, "met": True},
    },
    "details": {
        "benchmark": "vs_openflamingo",
        "machine": {"torch": "2.x", "transformers": "5.x", "cpu_count": 2},
        "results": {
            "pair_train": {"step_time_s": {"cosmo": 1.0, "openflamingo": 2.0}},
            "train/cosmo": _train(1.0, 300 * 2**20, 10_000_000, 50_000_000),
            "train/openflamingo": _train(2.0, 375 * 2**20, 22_000_000, 60_000_000),
            "generate/1img": {"tokens_per_s": {"cosmo": 25.0, "openflamingo": 10.0, "lm_only": 32.0}},
            "generate/4img": {"error": "boom"},
            "generate/4img/batch8": {"tokens_per_s": {"cosmo/interval2": 96.0, "openflamingo": 40.0}},
            "released_params": {"cosmo_trainable": 521_900_000, "cosmo_total": 2_140_900_000,
                                "openflamingo_trainable": 1_047_000_000,
                                "variants": {"interval2": {"cosmo_trainable": 301_700_000},
                                             "interval2_compress2": {"cosmo_trainable": 191_600_000}}},
        },
    },
}
ROOFLINE = {
    "benchmark": "roofline",
    "device": "cpu",
    "peak_matmul": {"flops_per_s": 1e11, "dtype": "torch.float32", "n": 2048},
    "configs": [
        {"config": "tiny", "batch": 8, "seq_len": 128, "train_step_flops": 2e9, "step_time_s": 0.2,
         "achieved_flops_per_s": 1e10, "fraction_of_peak": 0.1},
    ],
}
SCALING = {
    "benchmark": "scaling",
    "series": {
        "images": [
            {"images": 1, "cosmo": {"step_time_s": 0.1, "peak_memory_bytes": 100 * 2**20},
             "openflamingo": {"step_time_s": 0.2, "peak_memory_bytes": 120 * 2**20},
             "step_time_ratio": 0.5, "peak_memory_ratio": 0.833},
            {"images": 4, "cosmo": {"step_time_s": 0.15, "peak_memory_bytes": 110 * 2**20},
             "openflamingo": {"error": "x"}},
        ],
    },
}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_render_all_kinds(report, tmp_path, capsys):
    inputs = [_write(tmp_path, "vs.json", VS), _write(tmp_path, "roof.json", ROOFLINE), _write(tmp_path, "sc.json", SCALING)]
    out = tmp_path / "report"
    assert report.main(["--input", *map(str, inputs), "--output-dir", str(out)]) == 0
    markdown = capsys.readouterr().out
    assert markdown == (out / "report.md").read_text() + "\n"
    assert "| train_step_time_ratio | 0.500 | <= 0.6 | yes |" in markdown
    assert "| trainable_params_ratio | 0.450 | <= 0.4 | no |" in markdown
    assert "generate_tokens_per_s_ratio (4 images) | 3.100" in markdown
    assert "| generate/4img | error |" in markdown
    assert "| pair_train/openflamingo | 2.000 s/step |" in markdown
    assert "| generate/1img/cosmo | 25.00 tokens/s |" in markdown
    assert "| train/openflamingo |  | 375 MiB | 22.00M | 60.00M |" in markdown
    # the interval-2 variant, batch-8 generation and the bare-LM ceiling
    assert "| train_step_time_ratio_interval2 | 0.400 | <= 0.6 | yes |" in markdown
    assert "| trainable_params_ratio_interval2 | 0.300 | <= 0.4 | yes |" in markdown
    assert "| generate_tokens_per_s_ratio_interval2 | 2.700 | >= 2.0 | yes |" in markdown
    assert "| peak_memory_ratio_interval2 | 0.700 | - | - |" in markdown
    assert "| generate_tokens_per_s_ratio_interval2 (4 images) | 3.300 |" in markdown
    assert "| generate_tokens_per_s_ratio_batch8 | 1.800 | - | - |" in markdown
    assert "| generate_tokens_per_s_ratio_batch8_interval2 | 1.900 | - | - |" in markdown
    assert "| generate_tokens_per_s_ratio_batch8 (4 images) | 2.200 |" in markdown
    assert "| generate_tokens_per_s_ratio_batch8_interval2 (1 image) | 1.900 |" in markdown
    assert "| generate_tokens_per_s_ratio_batch8_4img_interval2 (fastest repeat) | 2.500 |" in markdown
    assert "| generate_ceiling_ratio | 3.200 | - | - |" in markdown
    assert "| generate_ceiling_ratio (4 images) | 4.500 |" in markdown
    assert "| generate_ceiling_with_encoding_ratio (4 images) | 1.800 |" in markdown
    assert "| trainable_params_ratio_released_2b_interval2 | 0.288 | - | - |" in markdown
    assert "| trainable_params_ratio_released_2b_interval2_compress2 | 0.183 | - | - |" in markdown
    assert "| generate/1img/lm_only | 32.00 tokens/s |" in markdown
    assert "| generate/4img/batch8/cosmo/interval2 | 96.00 tokens/s |" in markdown
    assert "| released_params/cosmo-2b/interval2_compress2 |  |  | 191.6M |  |" in markdown
    assert "| tiny | 8x128 | 2.00 | 0.200 | 10.00 | 10.0% |" in markdown
    assert "| 1 | 0.100 | 100 | 0.200 | 120 | 0.500 | 0.833 |" in markdown
    assert "| 4 | 0.150 | 110 | error | error | n/a | n/a |" in markdown
    if report._plt() is not None:
        for name in ("vs_openflamingo.png", "roofline.png", "scaling_images.png"):
            png = out / name
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({name})" in markdown


def test_skipped_roofline_and_unknown_json(report, tmp_path):
    skipped = _write(tmp_path, "skip.json", {"benchmark": "roofline", "device": "cuda", "skipped": "no CUDA"})
    markdown, pngs = report.render([skipped], tmp_path / "out")
    assert "Skipped: no CUDA." in markdown and pngs == []
    with pytest.raises(ValueError, match="Unrecognised"):
        report.render([_write(tmp_path, "bad.json", {"hello": 1})], tmp_path / "out2")


def _retrieval(r1):
    return {split: {"i2t_r1": r1, "i2t_r5": 0.9, "t2i_r1": r1 + 0.01, "t2i_r5": 0.8} for split in ("test", "test_iid")}


OBJECTIVES = {
    "benchmark": "objectives", "steps": 300, "config": {"batch_size": 32, "train_samples": 2000, "seed": 0},
    "settings": {
        "itc": {"retrieval": _retrieval(0.25), "step_time_s": 0.12, "ratios_vs_itc": {"step_time": 1.0},
                "final_losses": {"lm_loss": 0.5, "contrastive_loss": 0.6}},
        "itc+itm": {"retrieval": _retrieval(0.3), "step_time_s": 0.24,
                    "final_losses": {"lm_loss": 0.7, "contrastive_loss": 0.7, "itm_loss": 0.4},
                    "ratios_vs_itc": {"step_time": 2.0}},
    },
}


def _arm(em):
    split = {"exact_match": em, "cider": 2 * em, "bleu4": 0.5}
    return {"captioning": {"test": split, "test_iid": split},
            "vqa_zero_shot": {"test": {"accuracy": 0.4}, "test_iid": {"accuracy": 0.5}},
            "vqa_2shot": {"test": {"accuracy": 0.3}, "test_iid": {"accuracy": 0.35}},
            "stages": {"stage1": {"step_time_s": 0.2}, "stage2": {"step_time_s": 0.05}}}


PFORMER = {
    "benchmark": "pformer_vs_blip2", "steps": 400,
    "config": {"stage1_steps": 400, "stage2_steps": 400, "batch_size": 32, "seed": 0},
    "arms": {"blip2": _arm(0.1), "pformer+blip2": _arm(0.2)},
    "vqa_brackets": {"test": {"no_image": 0.3, "caption_context": 0.9},
                     "test_iid": {"no_image": 0.3, "caption_context": 0.95}},
    "diagnostics": {"alignment_mse_test/blip2": 0.5},
    "summary": {"metrics": {"blip2": {"test/vqa_zero_shot": 0.4}, "pformer+blip2": {"test/vqa_zero_shot": 0.4}}},
}


def test_render_objectives_and_pformer(report, tmp_path):
    inputs = [_write(tmp_path, "obj.json", OBJECTIVES), _write(tmp_path, "pf.json", PFORMER)]
    markdown, pngs = report.render(inputs, tmp_path / "out")
    row = "| itc+itm | 0.300 | 0.900 | 0.310 | 0.800 | 0.300 | 0.900 | 0.310 | 0.800 | 0.240 | 2.000 | 0.700 | 0.700 | 0.400 |"
    assert row in markdown
    assert "| itc | 0.250 |" in markdown and "| n/a |" in markdown  # no itm_loss without ITM
    assert "| pformer+blip2 | test | 0.200 | 0.400 | 0.400 | 0.300 | 0.200 | 0.050 |" in markdown
    assert "| caption_context | 0.900 | 0.950 |" in markdown and "alignment_mse_test/blip2 = 0.5" in markdown
    if report._plt() is not None:
        assert {p.name for p in pngs} == {"objectives.png", "pformer_vs_blip2.png"}


def _step(tower_r, r, tokens, step_s, speedup):
    return {"vision_merge_r": tower_r, "merge_r": r, "visual_tokens": tokens, "step_s": step_s, "speedup": speedup}


TOKEN_MERGE = {
    "benchmark": "token_merge",
    "machine": {"device": "cpu"},
    "settings": {"batch": 4, "tower": "CLIP ViT-B/16 shapes, 197 tokens"},
    "tower": {"r0": {"r": 0, "tokens_out": 197, "images_per_s": 2.0, "speedup": 1.0, "flop_ratio": 1.0},
              "r13": {"r": 13, "tokens_out": 41, "images_per_s": 3.2, "speedup": 1.6, "flop_ratio": 1.7}},
    "simvlg_step": {"r0": _step(0, 0, 197, 3.0, 1.0), "tower14_r0": _step(14, 0, 29, 0.75, 4.0)},
    "simvlg_quality": {
        "r0": {"merge_r": 0, "vision_merge_r": 0, "exact_match": 0.5, "cider": 6.0, "s_per_step": 0.12},
        "tower3_r0": {"merge_r": 0, "vision_merge_r": 3, "exact_match": 0.6, "cider": 7.0, "s_per_step": 0.1},
        "exact_match_points_lost": -10.0, "step_speedup": 1.2,
        "settings": {"steps": 30, "batch": 32, "eval_samples": 20, "split": "test_iid"},
    },
}


def test_render_token_merge(report, tmp_path):
    markdown, pngs = report.render([_write(tmp_path, "tm.json", TOKEN_MERGE)], tmp_path / "out")
    assert "| 13 | 41 | 3.200 | 1.600 | 1.700 |" in markdown
    assert "| tower14_r0 | 14 | 0 | 29 | 0.750 | 4.000 |" in markdown
    assert "| tower3_r0 | 3 | 0 | 0.600 | 7.000 | 0.100 |" in markdown
    assert "Exact-match points lost to merging: -10.0; step speedup 1.20x." in markdown
    without_quality = {k: v for k, v in TOKEN_MERGE.items() if k != "simvlg_quality"}
    markdown, _ = report.render([_write(tmp_path, "tm2.json", without_quality)], tmp_path / "out2")
    assert "Caption quality" not in markdown
    if report._plt() is not None:
        assert [p.name for p in pngs] == ["token_merge.png"] and pngs[0].stat().st_size > 1000
