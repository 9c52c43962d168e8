"""`--streaming`: parquet / webdataset shards read lazily, each process its own part, and a run killed with SIGKILL
after a checkpoint resumes at the exact next sample (the ids it consumes equal its stream's uninterrupted order)."""

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cosmo_vl.presets import get_config
from cosmo_vl.processing import load_any
from cosmo_vl.trainers import last_complete_checkpoint
from cosmo_vl.trainers.streaming import ResumableStream, load_streaming_data

from tiny_configs import tiny_cosmo_config, tiny_vision

ROOT = Path(__file__).resolve().parents[1]
SHARDS, ROWS = 4, 16


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 7 % 256, i * 13 % 256, 90)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 parquet shards and 4 webdataset tars of 16 samples each; ids 0..63 (keys s0000..s0063 in the tars)."""
    root = tmp_path_factory.mktemp("shards")
    (root / "parquet").mkdir()
    (root / "wds").mkdir()
    for s in range(SHARDS):
        ids = range(s * ROWS, (s + 1) * ROWS)
        rows = [{"id": i, "image": {"bytes": _png(i), "path": None}, "text": f"a red square number {i}"} for i in ids]
        pq.write_table(pa.Table.from_pylist(rows), root / "parquet" / f"train-{s:05d}.parquet", row_group_size=5)
        with tarfile.open(root / "wds" / f"shard-{s:05d}.tar", "w") as tar:
            for i in ids:
                for ext, data in (("png", _png(i)), ("txt", f"a blue circle {i}".encode())):
                    info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """A CosMo far smaller than cosmo-tiny, with cosmo-tiny's tokenizer ids and 32 px images (its processor's)."""
    preset = get_config("cosmo-tiny")
    text = preset.text_config.to_dict()
    text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    ids = {k: getattr(preset, k) for k in ("media_token_id", "endofchunk_token_id")}
    config = tiny_cosmo_config(vision_config=tiny_vision().to_dict() | {"image_size": 32, "num_hidden_layers": 1},
                               text_config=text, unimodal_depth=1, **ids)
    folder = tmp_path_factory.mktemp("config")
    config.save_pretrained(folder)
    return folder


def _ids(stream, n):
    return [ex["id"] for ex in islice(stream, n)]


@pytest.mark.parametrize("world", [1, 2, 3])  # 3: 4 shards do not split evenly, datasets splits by example
def test_stream_parts_are_disjoint_shuffled_and_resume_anywhere(shards, world):
    train = load_any(shards / "parquet", streaming=True)["train"]
    epoch = SHARDS * ROWS
    parts = [_ids(ResumableStream(train, seed=0, buffer_size=6, rank=r, world_size=world), 2 * epoch) for r in range(world)]
    sizes = [len(range(r, epoch, world)) for r in range(world)]  # by shards when they split evenly, else by example
    for e in range(2):  # in every data epoch the parts are disjoint and cover the data (shards move between parts)
        ids = [i for p, size in zip(parts, sizes) for i in p[e * size : (e + 1) * size]]
        assert sorted(ids) == list(range(epoch)) and ids != sorted(ids), e
    size = sizes[0]
    assert parts[0][:size] != parts[0][size : 2 * size], "the second data epoch must be reshuffled"
    assert _ids(ResumableStream(train, seed=0, buffer_size=6, rank=0, world_size=world), 30) == parts[0][:30]
    assert _ids(ResumableStream(train, seed=1, buffer_size=6, rank=0, world_size=world), 30) != parts[0][:30]
    for position in (0, 1, 5, 6, 7, size - 1, size, size + 3):  # block edges, an epoch's end, the next epoch
        stream = ResumableStream(train, seed=0, buffer_size=6, rank=0, world_size=world)
        consumed = _ids(stream, position + 3)  # the dataloader has read ahead of what training consumed
        state = json.loads(json.dumps(stream.save_state(position)))  # as written into the checkpoint
        resumed = ResumableStream(train, seed=0, buffer_size=6, rank=0, world_size=world)
        resumed.load_state_dict(state)
        assert consumed[:position] + _ids(resumed, 20) == parts[0][: position + 20], position
    other = ResumableStream(train, seed=0, buffer_size=8, rank=0, world_size=world)
    with pytest.raises(ValueError, match="buffer_size"):
        other.load_state_dict(state)


def _args(data, **overrides):
    args = dict(dataset=str(data), eval_dataset=None, image_column="image", text_column="text", max_train_samples=None,
                max_eval_samples=5, final_evaluation=True, shuffle_buffer_size=4, model_type="cosmo")
    training = dict(max_steps=10, seed=0, process_index=0, world_size=1, grit_sampler=True)
    return SimpleNamespace(**{**args, **overrides}), SimpleNamespace(**training)


def test_streaming_data_needs_max_steps_and_a_held_out_split(shards):
    args, training = _args(shards / "parquet")
    with pytest.raises(ValueError, match="test split"):
        load_streaming_data(args, training, [args.dataset])
    training.max_steps = -1
    with pytest.raises(ValueError, match="--max_steps"):
        load_streaming_data(args, training, [args.dataset])
    args, training = _args(shards / "parquet", eval_dataset=str(shards / "wds"))
    stream, eval_splits, _ = load_streaming_data(args, training, [args.dataset])
    assert isinstance(stream, ResumableStream) and not training.grit_sampler
    held_out = eval_splits["eval"]  # the first --max_eval_samples samples, in memory
    assert len(held_out) == 5 and held_out[0]["image"].size == (16, 16) and held_out[0]["text"] == "a blue circle 0"


# ---------------------------------------------------------------------------------------- training processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(config, data, output_dir, steps, save_steps, world, batch, accumulation, *extra):
    script = [str(ROOT / "tests" / "streaming_worker.py"), "--config", str(config), "--dataset", str(data),
              "--streaming", "--output_dir", str(output_dir), "--max_steps", str(steps), "--save_steps", str(save_steps),
              "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation),
              "--shuffle_buffer_size", "5", "--max_length", "24",
              "--logging_steps", "1",
              "--final_evaluation", "false", "--report_to", "none", "--warmup_steps", "1",
              "--dataloader_num_workers", "0", *extra]
    if world == 1:
        return [sys.executable, *script]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port()), *script]


def _run(command, ids_dir, **kwargs):
    ids_dir.mkdir(parents=True, exist_ok=True)
    # ACCELERATE_USE_CPU: DDP over gloo, as `accelerate launch --cpu` sets it.
    env = {**os.environ, "IDS_DIR": str(ids_dir), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "true"}
    return subprocess.Popen(command, env=env, **kwargs)


def _batches(ids_dir, rank):
    """The ids of every batch rank `rank` collated, in order (prefetched batches included)."""
    return [json.loads(line) for line in (ids_dir / f"ids_{rank}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "layout, world, steps, save_steps, batch, accumulation",
    # a data epoch is 8 optimizer steps with 1 process; with 2 (32 samples each), 2.7 steps of 2 x 6 samples
    [("wds", 1, 10, 3, 8, 1), ("parquet", 2, 6, 2, 6, 2)],
)
def test_sigkill_then_resume_consumes_the_uninterrupted_samples(shards, tiny_config, tmp_path, layout, world, steps,
                                                                save_steps, batch, accumulation):
    command = lambda output, *extra: _command(  # noqa: E731
        tiny_config, shards / layout, output, steps, save_steps, world, batch, accumulation, *extra)
    killed = _run(command(tmp_path / "run"), tmp_path / "ids_killed", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if (tmp_path / "run" / f"checkpoint-{save_steps}" / "trainer_state.json").exists():
            break
        time.sleep(0.02)
    # The training processes and their launcher (torch.distributed.run starts its workers in their own sessions).
    processes = [*psutil.Process(killed.pid).children(recursive=True), psutil.Process(killed.pid)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    killed.wait()
    assert not psutil.wait_procs(processes, timeout=30)[1], "a training process survived"
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int(Path(last_complete_checkpoint(tmp_path / "run")).name.split("-")[1])
    assert save_steps <= killed_at < steps
    assert {f"stream_state_{r}.json" for r in range(world)} <= {p.name for p in (tmp_path / "run" / f"checkpoint-{killed_at}").iterdir()}

    resumed = _run(command(tmp_path / "run", "--resume_from_checkpoint", "last"), tmp_path / "ids_resumed",
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()[-3000:]

    # An uninterrupted run consumes each process's stream in order (the stream's own order is checked above).
    train = load_any(shards / layout, streaming=True)["train"]
    key = "id" if layout == "parquet" else "__key__"
    consumed = {}
    for rank in range(world):
        stream = [ex[key] for ex in islice(ResumableStream(train, seed=0, buffer_size=5, rank=rank, world_size=world),
                                           steps * accumulation * batch)]
        full = [stream[i : i + batch] for i in range(0, len(stream), batch)]  # the batches optimizer steps consume
        again = (_batches(tmp_path / "ids_killed", rank)[: killed_at * accumulation]
                 + _batches(tmp_path / "ids_resumed", rank))
        assert again[: steps * accumulation] == full, f"rank {rank}: killed at step {killed_at}"
        assert all(len(ids) == batch for ids in full)
        consumed[rank] = stream
    per_rank = SHARDS * ROWS // world  # the first data epoch: the ranks' parts are disjoint and cover the data
    first_epoch = [i for ids in consumed.values() for i in ids[:per_rank]]
    assert len(set(first_epoch)) == SHARDS * ROWS


def test_stream_draws_one_caption_of_a_list_per_sample_and_epoch(tmp_path):
    rows = [{"id": i, "image": {"bytes": _png(i), "path": None}, "text": [f"caption {i} {k}" for k in range(4)]}
            for i in range(8)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    train = load_any(tmp_path / "train.parquet", streaming=True)["train"]
    draw = lambda seed: [(ex["id"], ex["text"]) for ex in islice(ResumableStream(train, seed=seed, buffer_size=3), 16)]  # noqa: E731
    first = draw(0)
    assert all(isinstance(text, str) and text.startswith(f"caption {i} ") for i, text in first)
    assert first == draw(0)
    by_epoch = [dict(first[:8]), dict(first[8:])]
    assert sorted(by_epoch[0]) == sorted(by_epoch[1]) == list(range(8))
    assert any(by_epoch[0][i] != by_epoch[1][i] for i in range(8)), "a new caption is drawn in the next epoch"
