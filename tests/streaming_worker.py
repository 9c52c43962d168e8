"""Runs `examples/pretrain.py` with its collator recording, per process, the ids of the samples of every batch it
collates (one JSON line per batch in `$IDS_DIR/ids_<rank>.jsonl`): the data order that tests/test_streaming.py checks."""

import json
import os
import sys
from pathlib import Path

from script_loading import load_script

pretrain = load_script("examples/pretrain.py", "pretrain_streaming_worker")


class RecordingCollator(pretrain.VLCollator):
    def __call__(self, examples):
        ids = [example["id"] if "id" in example else example["__key__"] for example in examples]
        with open(Path(os.environ["IDS_DIR"]) / f"ids_{os.environ.get('RANK', '0')}.jsonl", "a") as f:
            f.write(json.dumps(ids) + "\n")
        return super().__call__(examples)


pretrain.VLCollator = RecordingCollator

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(pretrain.main(sys.argv[1:]))
