"""bench/token_merge.py's quality comparison, run for a few steps (speed itself is not asserted)."""

import pytest
from script_loading import load_script


@pytest.mark.parametrize("merge_r, vision_merge_r, key", [(3, 0, "r3"), (0, 3, "tower3_r0")])
def test_quality_comparison_trains_both_settings_from_the_same_start(merge_r, vision_merge_r, key):
    module = load_script("bench/token_merge.py", "bench_token_merge")
    out = module.bench_simvlg_quality(steps=3, batch=4, eval_samples=4, merge_r=merge_r, vision_merge_r=vision_merge_r)
    assert set(out) >= {"r0", key, "exact_match_points_lost", "step_speedup", "settings"}
    assert (out[key]["merge_r"], out[key]["vision_merge_r"]) == (merge_r, vision_merge_r)
    for point in (out["r0"], out[key]):
        assert point["s_per_step"] > 0 and 0 <= point["exact_match"] <= 1 and point["final_loss"] > 0
    # Same seed, same batches: only the merging differs, so the losses differ.
    assert out["r0"]["final_loss"] != out[key]["final_loss"]
    assert out["exact_match_points_lost"] == 100 * (out["r0"]["exact_match"] - out[key]["exact_match"])
