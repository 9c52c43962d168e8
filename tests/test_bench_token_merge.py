"""bench/token_merge.py's quality comparison, run for a few steps (speed itself is not asserted)."""

from script_loading import load_script


def test_quality_comparison_trains_both_settings_from_the_same_start():
    module = load_script("bench/token_merge.py", "bench_token_merge")
    out = module.bench_simvlg_quality(steps=3, batch=4, eval_samples=4)
    assert set(out) >= {"r0", "r3", "exact_match_points_lost", "step_speedup", "settings"}
    for point in (out["r0"], out["r3"]):
        assert point["s_per_step"] > 0 and 0 <= point["exact_match"] <= 1 and point["final_loss"] > 0
    # Same seed, same batches: only the merging differs, so the losses differ.
    assert out["r0"]["final_loss"] != out["r3"]["final_loss"]
    assert out["exact_match_points_lost"] == 100 * (out["r0"]["exact_match"] - out["r3"]["exact_match"])
