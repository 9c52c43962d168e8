"""Input pipeline and host time of the main training job (`examples/pretrain.py`, cosmo-tiny on the embedded data).

Three measurements, written to one JSON file:
- `collator`: samples/s of `VLCollator` behind a shuffled DataLoader (row fetch, decoding, resize/normalise,
  tokenize, pad) per worker count, for image-caption pairs (`shapes-captions`) and 8-frame clips
  (`shapes-videos`, mp4 decoding included).
- `trainer`: the real `examples/pretrain.py` loop (CosmoTrainer, its defaults, GRIT sampler included) for
  `--steps` steps per worker count, each optimizer step split by `cosmo_vl.benchmarking.StepTimer` into the wait
  for its batch and its compute (forward / backward+clipping / optimizer / other host work), plus the seconds from
  `main()` to the first step (data loading, model and trainer build).
- `start`: seconds to import the script's modules (the run's start before `main()`).

    python bench/input_pipeline.py --output out/input_pipeline.json --quick
    python bench/input_pipeline.py --output out/input_pipeline.json --profile_steps 30   # + torch.profiler table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]


def load_pretrain_script():
    """`examples/pretrain.py` as a module (its import time is the start-up cost of the run's imports)."""
    import importlib.util

    start = time.perf_counter()
    spec = importlib.util.spec_from_file_location("pretrain_script", ROOT / "examples" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_script"] = module
    spec.loader.exec_module(module)
    return module, time.perf_counter() - start


def collator_rates(workers: list[int], batch_size: int, image_batches: int, video_batches: int,
                   image_dataset: str = "shapes-captions", video_dataset: str = "shapes-videos") -> dict:
    """Samples/s of the collator path per worker count, images and 8-frame videos (embedded names or paths)."""
    from cosmo_vl.benchmarking import loader_throughput
    from cosmo_vl.presets import get_processor
    from cosmo_vl.processing import VLCollator, load_any, one_caption_per_sample

    processor = get_processor("cosmo-tiny")
    images = one_caption_per_sample(load_any(image_dataset)["train"], 0)
    kinds = [("image", images, image_batches)]
    if video_dataset != "none":  # "none": machines without a video decoder
        kinds.append(("video", load_any(video_dataset)["train"], video_batches))
    out = {"batch_size": batch_size, "image": [], "video": []}
    for kind, data, batches in kinds:
        collator = VLCollator(processor, max_length=64, truncation=True, num_frames=8)
        for n in workers:
            row = loader_throughput(data, collator, batch_size, num_workers=n, num_batches=batches)
            out[kind].append(row)
            print(f"collator {kind:5s} workers={n}: {row['samples_per_s']:8.1f} samples/s "
                  f"({row['ms_per_batch']:.1f} ms/batch, first batches {row['warmup_s']:.2f} s)", flush=True)
    return out


def trainer_run(pretrain, steps: int, workers: int, threads: int | None, extra: list[str], profile_steps: int = 0,
                profile_dir: Path | None = None) -> dict:
    """`pretrain.main` for `steps` steps (no final evaluation, no saving) with a `StepTimer`."""
    import torch

    from cosmo_vl.benchmarking import StepTimer

    timer = StepTimer(synchronize=torch.cuda.is_available(), parts=True)
    callbacks = [timer]
    profiler = None
    if profile_steps:
        profiler = ProfileSteps(skip=2, steps=profile_steps)
        callbacks.append(profiler)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--max_steps", str(steps), "--final_evaluation", "False", "--output_dir", tmp, "--report_to", "none",
                "--save_strategy", "no", "--disable_tqdm", "True", "--dataloader_num_workers", str(workers), *extra]
        if threads:
            argv += ["--num_threads", str(threads)]
        start = time.perf_counter()
        pretrain.main(argv, callbacks=callbacks)
        total = time.perf_counter() - start
    summary = timer.summary()
    first = timer.first_step_begin - start if timer.first_step_begin is not None else None
    result = {"workers": workers, "argv": argv, "main_s": total, "to_first_step_s": first, **summary,
              "data_wait_ms": 1e3 * summary["data_wait_s"], "compute_ms": 1e3 * summary["compute_s"],
              "host_outside_fwd_bwd_opt_ms": 1e3 * (summary["data_wait_s"] + summary.get("host_other_s", 0.0))}
    if profiler is not None:
        result["profile"] = profiler.table(profile_dir, f"profile_w{workers}.txt")
    return result


class ProfileSteps(TrainerCallback):
    """torch.profiler over `steps` optimizer steps after the first `skip`, driven from the Trainer's callbacks."""

    def __init__(self, skip: int, steps: int):
        self.skip, self.steps, self.prof, self.done = skip, steps, None, False

    def on_step_end(self, args, state, control, **kwargs):
        import torch
        from torch.profiler import ProfilerActivity, profile

        if state.global_step == self.skip and self.prof is None:
            cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
            self.prof = profile(activities=[ProfilerActivity.CPU, *cuda])
            self.prof.__enter__()
        elif self.prof is not None and not self.done and state.global_step == self.skip + self.steps:
            self.prof.__exit__(None, None, None)
            self.done = True

    def on_train_end(self, args, state, control, **kwargs):
        # A run shorter than skip + steps: stop the profiler over the steps it saw (a running one crashes at exit).
        if self.prof is not None and not self.done:
            self.prof.__exit__(None, None, None)
            self.steps, self.done = max(1, state.global_step - self.skip), True

    def table(self, folder: Path | None, name: str) -> dict:
        """Top ops by self CPU time, per step; the full table goes to `folder / name`."""
        if not self.done:
            return {}
        averages = self.prof.key_averages()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(averages.table(sort_by="self_cpu_time_total", row_limit=50))
        top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        return {"steps": self.steps,
                "top_self_cpu_ms_per_step": {e.key: e.self_cpu_time_total / 1e3 / self.steps for e in top}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="out/input_pipeline.json")
    parser.add_argument("--quick", action="store_true", help="Fewer batches and steps (a few minutes on 2 cores).")
    parser.add_argument("--workers", type=int, nargs="*", default=None,
                        help="Collator worker counts (default: 0, 1, 2, 4, ... up to the cores).")
    parser.add_argument("--trainer_workers", type=int, nargs="*", default=None,
                        help="Worker counts of the trainer runs (default: 0 and, with 2+ cores, min(8, cores - 1)).")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per trainer run (200; quick 40).")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the trainer runs (default: all).")
    parser.add_argument("--profile_steps", type=int, default=0, help="torch.profiler table over this many steps (they are timed too, so slower).")
    parser.add_argument("--batch_size", type=int, default=64, help="Collator batch (the main job's is 64).")
    parser.add_argument("--image_dataset", default="shapes-captions", help="Embedded name or path (train split).")
    parser.add_argument("--video_dataset", default="shapes-videos", help="Embedded name or path (train split); 'none' skips videos.")
    parser.add_argument("--skip_collator", action="store_true")
    parser.add_argument("--skip_trainer", action="store_true")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="More `examples/pretrain.py` options for the trainer runs (last on the line).")
    args = parser.parse_args(argv)
    from cosmo_vl.trainers.dataloader_defaults import usable_cores

    n = usable_cores()
    workers = args.workers if args.workers is not None else sorted({0, *[w for w in (1, 2, 4, 8, 16) if w <= n]})
    trainer_workers = args.trainer_workers if args.trainer_workers is not None else sorted({0, min(8, n - 1)})
    steps = args.steps or (40 if args.quick else 200)
    output = Path(args.output)

    import torch

    pretrain, import_s = load_pretrain_script()
    result = {"cores": n, "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
              "load_average": os.getloadavg(), "start": {"import_s": import_s}}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
    if not args.skip_collator:
        result["collator"] = collator_rates(workers, args.batch_size, 10 if args.quick else 30, 3 if args.quick else 8,
                                            args.image_dataset, args.video_dataset)
    if not args.skip_trainer:
        result["trainer"] = []
        for w in trainer_workers:
            row = trainer_run(pretrain, steps, w, args.threads, args.extra, args.profile_steps, output.parent)
            result["trainer"].append(row)
            print(f"trainer workers={w}: {row['steps_per_s']:.2f} steps/s, data wait {row['data_wait_ms']:.1f} ms, "
                  f"compute {row['compute_ms']:.1f} ms (fwd {1e3 * row.get('forward_s', 0):.1f}, bwd+clip "
                  f"{1e3 * row.get('backward_s', 0):.1f}, opt {1e3 * row.get('optimizer_s', 0):.1f}, other "
                  f"{1e3 * row.get('host_other_s', 0):.1f}); first step after {row['to_first_step_s']:.1f} s",
                  flush=True)
    result["load_average_end"] = os.getloadavg()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
