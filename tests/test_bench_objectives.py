"""bench/objectives.py end to end at a smoke size: every setting trains, is evaluated and lands in the JSON."""

import json

import pytest

from script_loading import load_script


@pytest.fixture(scope="module")
def objectives():
    return load_script("bench/objectives.py", "bench_objectives")


def test_setting_options_are_cumulative(objectives):
    args = objectives.parse_args(["--output", "unused", "--quick"])
    assert objectives.setting_options("itc", args) == {}
    assert set(objectives.setting_options("itc+itm", args)) == {"itm_loss_weight", "itm_negatives"}
    full = objectives.setting_options("itc+itm+mod+grit", args)
    assert full["momentum_distillation"] and full["grit_sampler"] and full["itm_loss_weight"] == 1.0
    assert (args.steps, args.batch_size, args.train_samples) == (4, 8, 32)


def _run(r1, step):
    split = {"i2t_r1": r1, "i2t_r5": 1.0, "t2i_r1": r1, "t2i_r5": 1.0, "num_texts": 5}
    return {"options": {}, "retrieval": {"test": split, "test_iid": split}, "step_time_s": step,
            "step_time_median_s": step, "train_wall_s": 1.0, "eval_wall_s": 1.0, "final_losses": {"lm_loss": r1}}


def test_merge_runs_of_different_seeds(objectives, tmp_path, capsys):
    paths = []
    for seed, r1 in ((0, 0.2), (1, 0.4)):
        settings = {name: {**_run(r1 * (k + 1), 1.0 + k), "seeds": [seed], "step_time_interleaved_s": 1.0 + k}
                    for k, name in enumerate(("itc", "itc+itm"))}
        config = {"batch_size": 8, "train_samples": 32, "seeds": [seed], "threads": 1, "eval_samples": 8}
        data = {"benchmark": "objectives", "steps": 3, "config": config, "settings": settings}
        paths.append(tmp_path / f"seed{seed}.json")
        paths[-1].write_text(json.dumps(data))
    out = tmp_path / "merged.json"
    assert objectives.main(["--output", str(out), "--merge", *map(str, paths)]) == 0
    merged = json.loads(out.read_text())
    assert merged["config"]["seeds"] == [0, 1] and merged["settings"]["itc"]["seeds"] == [0, 1]
    assert merged["settings"]["itc+itm"]["retrieval"]["test"]["i2t_r1"] == pytest.approx(0.6)
    assert merged["settings"]["itc+itm"]["ratios_vs_itc"]["step_time"] == 2.0
    assert "0.600+-0.283" in capsys.readouterr().out


def test_seeds_are_averaged(objectives):
    entry = objectives.aggregate({0: _run(0.2, 1.0), 1: _run(0.4, 3.0)})
    assert entry["seeds"] == [0, 1] and entry["retrieval"]["test"]["i2t_r1"] == pytest.approx(0.3)
    assert entry["retrieval_std"]["test"]["i2t_r1"] == pytest.approx(0.14142, abs=1e-4)
    assert entry["step_time_s"] == 2.0 and entry["final_losses"]["lm_loss"] == pytest.approx(0.3)
    assert set(entry["per_seed"]) == {"0", "1"}
    assert objectives.aggregate({3: _run(0.2, 1.0)})["seeds"] == [3]


def test_quick_run_writes_every_setting(objectives, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COSMO_VL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "objectives.json"
    assert objectives.main(["--output", str(out), "--quick", "--steps", "2"]) == 0
    data = json.loads(out.read_text())
    assert data["steps"] == 2 and data["benchmark"] == "objectives"
    assert list(data["settings"]) == ["itc", "itc+itm", "itc+itm+mod", "itc+itm+mod+grit"]
    for name, entry in data["settings"].items():
        for split in ("test", "test_iid"):
            assert {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"} <= set(entry["retrieval"][split])
        assert entry["step_time_s"] > 0 and entry["step_time_interleaved_s"] > 0 and "lm_loss" in entry["final_losses"]
        assert ("itm_loss" in entry["final_losses"]) == ("itm" in name)
        assert entry["ratios_vs_itc"]["step_time"] > 0 and "test/i2t_r1" in entry["ratios_vs_itc"]
    assert data["settings"]["itc"]["ratios_vs_itc"]["step_time"] == 1.0
    assert set(data["settings"]["itc+itm+mod+grit"]["same_caption_pairs_per_batch"]) == {"grit_last_epoch", "random"}
    assert objectives.same_caption_pairs(["a", "a", "b", "a"], [0, 1, 2, 3], 2, 0)["grit_last_epoch"] == 0.5
    assert "| itc+itm+mod+grit |" in capsys.readouterr().out
