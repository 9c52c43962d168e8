"""Training-step time and peak memory of CosMo and OpenFlamingo as the input grows.

    python bench/scaling.py --output scaling.json [--quick] [--venv DIR]

Three series at one small shared shape, each point a separate worker process in the OpenFlamingo venv (the same
mechanism and venv as `bench/vs_openflamingo.py`, created on first use):
- images per sample (1..16) at 128 tokens (an interleaved document: one `<image>` per chunk);
- frames per video (1..16), one video per sample at 128 tokens. OpenFlamingo's `_encode_vision_x` asserts one
  frame, although its resampler takes frames; its points run its own vision encoder and resampler on the frames
  and condition its layers the same way, skipping only that assertion (`_workload.openflamingo_encode_frames`);
- sequence length (128..2048) with one image.
Each point: forward + backward + AdamW step, warm-up then the median of timed steps, both models timed in one process
with alternating steps (so load from other processes hits both alike); peak memory in a separate process per model:
the growth of the resident set size from before the model is built to the high-water mark of one training step
(see `bench/_peer_env.PeakMemory`). Short runs
on a small CPU: absolute times are noisy, the trends and the ours/peer ratios are what to read.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peer_env  # noqa: E402

SHAPE = {
    "vision": {"width": 256, "layers": 4, "patch": 32, "image": 224},
    "lm": {"hidden": 512, "layers": 6, "heads": 8, "intermediate": 1408, "vocab": 8000},
}
MODELS = ("cosmo", "openflamingo")


def series(quick: bool) -> dict:
    if quick:
        return {"images": [1, 16], "frames": [1, 16], "seq_len": [128, 2048]}
    return {"images": [1, 2, 4, 8, 16], "frames": [1, 2, 4, 8, 16], "seq_len": [128, 256, 512, 1024, 2048]}


def point(axis: str, value: int) -> dict:
    batch = {"batch": 1, "seq_len": 128, "num_media": 1, "frames": 1}
    batch[{"images": "num_media", "frames": "frames", "seq_len": "seq_len"}[axis]] = value
    return batch


def main(argv=None) -> int:
    args, python = _peer_env.peer_cli(__doc__.split("\n\n")[0], "the two ends of each series and fewer steps", argv)
    if python is None:
        return 0
    start = time.perf_counter()
    warmup, iters = (1, 3) if args.quick else (2, 5)
    out = {"benchmark": "scaling", "quick": args.quick, "shape": SHAPE, "series": {}}
    for axis, values in series(args.quick).items():
        rows = []
        for value in values:
            row = {axis: value}
            batch = point(axis, value)
            t = time.perf_counter()
            pair = _peer_env.run_worker(python, Path(__file__).resolve(), {
                "name": f"{axis}={value}/time", "kind": "pair_train", "shape": SHAPE, "batch": batch,
                "warmup": warmup, "iters": iters})
            for model in MODELS:  # peak memory: one process per model, one step after building
                r = _peer_env.run_worker(python, Path(__file__).resolve(), {
                    "name": f"{axis}={value}/{model}", "kind": "train", "model": model, "shape": SHAPE,
                    "batch": batch, "warmup": 0, "iters": 1})
                if "error" in r or "error" in pair:
                    row[model] = {"error": (r.get("error") or pair.get("error"))[-1500:]}
                    print(f"[scaling] {axis}={value}/{model}: error", flush=True)
                    continue
                row[model] = {"step_time_s": pair["step_time_s"][model], "step_times_s": pair["step_times_s"][model],
                              "min_step_time_s": pair["min_step_time_s"][model],
                              "peak_memory_bytes": r["peak_rss_delta_bytes"],
                              "step_peak_delta_bytes": r["step_peak_delta_bytes"]}
                if axis == "frames" and model == "openflamingo" and value > 1:
                    row[model]["note"] = "frames via its vision encoder + resampler, skipping its F == 1 assertion"
            if "error" not in pair:
                row["load_average"] = pair.get("load_average")
                print(f"[scaling] {axis}={value}: " + ", ".join(
                    f"{m} {row[m]['step_time_s']:.3f} s/step +{row[m]['peak_memory_bytes'] / 2**20:.0f} MiB"
                    for m in MODELS if "step_time_s" in row.get(m, {})) + f" ({time.perf_counter() - t:.0f} s)",
                    flush=True)
            a, b = row.get("cosmo", {}), row.get("openflamingo", {})
            if "step_time_s" in a and "step_time_s" in b:
                row["step_time_ratio"] = a["step_time_s"] / b["step_time_s"]
                row["peak_memory_ratio"] = a["peak_memory_bytes"] / b["peak_memory_bytes"]
                row["step_time_ratio_fastest_repeat"] = a["min_step_time_s"] / b["min_step_time_s"]
            rows.append(row)
            out["series"][axis] = rows
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.with_suffix(".partial.json").write_text(json.dumps(out, indent=2))
    info = _peer_env.peer_machine_info(python)
    out["details"] = {
        "machine": info,
        "load_average_at_end": os.getloadavg(),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "warmup_steps": warmup,
        "timed_steps": iters,
        "notes": [
            "batch 1; images and frames series at 128 tokens; sequence series with one image.",
            "CosMo: cross-attention before the upper half of the LM (interval 1); OpenFlamingo: before every layer.",
            "peak memory = resident-set high-water mark of the steps minus the resident size before the model was "
            "built (weights + grads + AdamW states + activations).",
            "Absolute CPU times are noisy (small shared CPU).",
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2))
    args.output.with_suffix(".partial.json").unlink(missing_ok=True)
    for axis, rows in out["series"].items():
        print(axis, [(r[axis], round(r.get("step_time_ratio", float("nan")), 3)) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
