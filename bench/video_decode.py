"""Decoding throughput of the embedded videos with decord: one process, then a torch DataLoader with workers.

    python bench/video_decode.py                              # shapes-videos, 8 frames per clip, 2 workers
    python bench/video_decode.py --num-videos 400 --sampling random_segment --output decode.json

Prints (and with --output writes) one JSON object with frames/s and clips/s of both set-ups side by side.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cosmo_vl.processing.synthetic import load_embedded_dataset  # noqa: E402
from cosmo_vl.processing.video import read_video  # noqa: E402


class Clips(Dataset):
    def __init__(self, paths, num_frames, sampling, size):
        self.paths, self.num_frames, self.sampling, self.size = paths, num_frames, sampling, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        frames = read_video(self.paths[i], self.num_frames, self.sampling, size=self.size, seed=i)
        return torch.from_numpy(frames)


def measure(loader, repeats: int) -> dict:
    clips = frames = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in loader:
            clips += batch.shape[0]
            frames += batch.shape[0] * batch.shape[1]
    seconds = time.perf_counter() - start
    return {"clips": clips, "frames": frames, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 1), "clips_per_s": round(clips / seconds, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="shapes-videos")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--num-videos", type=int, default=200, help="clips decoded per pass (from the train split)")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--sampling", default="uniform", choices=["uniform", "random_segment"])
    parser.add_argument("--size", type=int, default=None, help="resize frames to size x size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the clips per set-up")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    train = load_embedded_dataset(args.dataset, cache_dir=args.cache_dir)["train"]
    paths = train["video"][: args.num_videos]
    clips = Clips(paths, args.num_frames, args.sampling, args.size)
    clips[0]  # warm-up: imports, file cache
    single = DataLoader(clips, batch_size=args.batch_size, num_workers=0)
    workers = DataLoader(clips, batch_size=args.batch_size, num_workers=args.workers, persistent_workers=True)
    next(iter(workers))  # start the workers outside the timing
    result = {
        "dataset": args.dataset,
        "num_videos": len(paths),
        "num_frames": args.num_frames,
        "sampling": args.sampling,
        "size": args.size,
        "source_resolution": list(read_video(paths[0], 1).shape[1:3]),
        "single_process": measure(single, args.repeats),
        f"dataloader_{args.workers}_workers": measure(workers, args.repeats),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
