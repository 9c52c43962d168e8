"""Resume from the last checkpoint that was completely written; checkpoints of safetensors and JSON files only."""

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from transformers.trainer import SCHEDULER_NAME, TRAINING_ARGS_NAME
from transformers.utils import is_sagemaker_mp_enabled, is_torch_xla_available

from .sharding import load_sharded_optimizer, sharded_optimizer_dir

logger = logging.getLogger(__name__)

_STEP = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` folder whose `trainer_state.json` (written last by the Trainer) parses;
    a run killed while saving leaves a partial folder, which is skipped."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    candidates = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))
    )
    for _, path in reversed(candidates):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def resolve_resume(resume: str | bool | None, output_dir: str | Path) -> str | None:
    """`--resume_from_checkpoint` value -> checkpoint path: "true"/"last" pick the last complete checkpoint."""
    if resume is None or resume is False or str(resume).lower() in ("", "false", "none"):
        return None
    if resume is True or str(resume).lower() in ("true", "last"):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no complete checkpoint in {output_dir}")
        return found
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    return str(resume)


# ------------------------------------------------------------------------------------ safetensors-only checkpoints
# Written by hand because transformers' Trainer pickles these files (optimizer.pt, scheduler.pt, rng_state.pth,
# scaler.pt, training_args.bin); here tensors go to safetensors and everything else to JSON.
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
TRAINING_ARGS_FILE = "training_args.json"
_TENSOR, _TUPLE = "__tensor__", "__tuple__"
_DEVICE_RNG = ("cuda", "xpu", "npu", "hpu", "mlu", "musa")


class _Tensors(dict):
    """Tensors by key for a safetensors file; one tensor met twice (a hyper-parameter shared by groups) is kept once."""

    def __init__(self):
        super().__init__()
        self._keys: dict[int, str] = {}

    def add(self, key: str, tensor: torch.Tensor) -> str:
        if id(tensor) not in self._keys:
            self._keys[id(tensor)] = key
            self[key] = tensor.detach().cpu().contiguous()
        return self._keys[id(tensor)]


def _pack(value: Any, key: str, tensors: _Tensors | None) -> Any:
    """`value` as JSON, tuples tagged; tensors go to `tensors` (an error where `tensors` is None)."""
    if isinstance(value, torch.Tensor):
        if tensors is None:
            raise TypeError(f"state entry {key!r} is a tensor, where only JSON values are written")
        return {_TENSOR: tensors.add(key, value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_pack(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _pack(v, f"{key}.{k}", tensors) for k, v in value.items()}
    raise TypeError(f"state entry {key!r} ({type(value).__name__}) is neither a tensor nor JSON-serialisable: "
                    "it cannot be written to a safetensors/JSON checkpoint")


def _unpack(value: Any, tensors: dict) -> Any:
    """Inverse of `_pack`."""
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_TUPLE}:
            return tuple(_unpack(v, tensors) for v in value[_TUPLE])
        return {k: _unpack(v, tensors) for k, v in value.items()}
    return value


def save_optimizer_state(state_dict: dict, path: str | Path) -> None:
    """A torch optimizer's `state_dict()` -> one safetensors file: tensors under `state.<param_index>.<name>`
    (`param_groups.<i>.<name>` for tensor hyper-parameters), the rest as JSON in the file's metadata."""
    tensors = _Tensors()
    layout = {}
    for key, value in state_dict.items():
        if key != "state":
            layout[key] = _pack(value, key, tensors)
            continue
        if bad := [index for index in value if not isinstance(index, int)]:
            raise TypeError(f"optimizer state key {bad[0]!r} is not a parameter index")
        layout[key] = {str(index): {name: _pack(v, f"state.{index}.{name}", tensors) for name, v in entries.items()}
                       for index, entries in value.items()}
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", "optimizer": json.dumps(layout)})


def load_optimizer_state(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The state dict written by `save_optimizer_state`, tensors on `device`."""
    with safetensors.safe_open(str(path), framework="pt", device=str(device)) as f:
        layout = json.loads(f.metadata()["optimizer"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {key: {int(index): _unpack(entries, tensors) for index, entries in value.items()} if key == "state"
            else _unpack(value, tensors) for key, value in layout.items()}


def save_json_state(state: dict, path: str | Path) -> None:
    """A state dict of numbers, strings, lists and tuples (a scheduler's, a grad scaler's) -> JSON."""
    Path(path).write_text(json.dumps(_pack(state, Path(path).stem, None), indent=1))


def load_json_state(path: str | Path) -> dict:
    return _unpack(json.loads(Path(path).read_text()), {})


def rng_state_file(checkpoint: str | Path, process_index: int, world_size: int) -> Path:
    """`rng_state.safetensors`, or `rng_state_<process_index>.safetensors` when world_size > 1 (the Trainer's names)."""
    return Path(checkpoint) / ("rng_state.safetensors" if world_size <= 1 else f"rng_state_{process_index}.safetensors")


def _device_rng_modules():
    for name in _DEVICE_RNG:
        module = getattr(torch, name, None)
        if module is not None and hasattr(module, "get_rng_state_all") and module.is_available():
            yield name, module


def save_rng_state(path: str | Path) -> None:
    """torch CPU and accelerator generators as tensors (`cpu`, `cuda.<device>`, ...), python `random` and numpy
    as JSON metadata."""
    tensors = {"cpu": torch.random.get_rng_state()}
    for name, module in _device_rng_modules():
        tensors.update({f"{name}.{i}": s for i, s in enumerate(module.get_rng_state_all())})
    kind, key, pos, has_gauss, cached = np.random.get_state()
    metadata = {
        "format": "pt",
        "python": json.dumps(_pack(random.getstate(), "python", None)),
        "numpy": json.dumps([kind, key.tolist(), pos, has_gauss, cached]),
    }
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def load_rng_state(path: str | Path) -> None:
    """Restore the generators saved by `save_rng_state`."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    random.setstate(_unpack(json.loads(metadata["python"]), {}))
    kind, key, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.random.set_rng_state(tensors["cpu"])
    for name, module in _device_rng_modules():
        states = [tensors[k] for k in sorted((k for k in tensors if k.startswith(f"{name}.")),
                                             key=lambda k: int(k.rsplit(".", 1)[1]))]
        try:
            module.set_rng_state_all(states)
        except (RuntimeError, IndexError, ValueError) as error:  # fewer devices than at save time: warn, go on
            logger.error("Could not restore the %s RNG states (%s): the resumed run will not match exactly.",
                         name, error)


class SafetensorsCheckpointMixin:
    """Trainer mixin: checkpoints hold only `.safetensors` and `.json` files (optimizer, scheduler, grad scaler, RNG
    states, training args); old pickled checkpoints still load. DeepSpeed, FSDP, XLA and SageMaker keep their own
    formats."""

    def _own_optimizer_format(self) -> bool:
        return not (self.is_deepspeed_enabled or self.is_fsdp_enabled or is_torch_xla_available()
                    or is_sagemaker_mp_enabled())

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._own_optimizer_format():
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            save_optimizer_state(self.optimizer.state_dict(), os.path.join(output_dir, OPTIMIZER_FILE))
            if self.lr_scheduler is not None:
                save_json_state(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        if folder := sharded_optimizer_dir(self, checkpoint):
            if fresh := load_sharded_optimizer(self, folder):
                logger.info("Parameters without an optimizer state in %s start fresh: %s", folder, fresh)
            # The Trainer's own file and reading for FSDP (a pickle of numbers, read with weights_only).
            self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))
            return
        optimizer_file = os.path.join(checkpoint, OPTIMIZER_FILE)
        scheduler_file = os.path.join(checkpoint, SCHEDULER_FILE)
        if not (self._own_optimizer_format() and os.path.isfile(optimizer_file) and os.path.isfile(scheduler_file)):
            return super()._load_optimizer_and_scheduler(checkpoint)
        # As the Trainer: CPU on one device, each process's own device in distributed training.
        device = self.args.device if self.args.world_size > 1 and self.args.device.type != "cpu" else "cpu"
        self.optimizer.load_state_dict(load_optimizer_state(optimizer_file, device))
        self.lr_scheduler.load_state_dict(load_json_state(scheduler_file))

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or is_torch_xla_available():
            return super()._save_scaler(output_dir)
        if self.args.should_save:
            save_json_state(scaler.state_dict(), os.path.join(output_dir, SCALER_FILE))

    def _load_scaler(self, checkpoint: str | None) -> None:
        path = None if checkpoint is None else os.path.join(checkpoint, SCALER_FILE)
        if path is None or not os.path.isfile(path) or is_torch_xla_available():
            return super()._load_scaler(checkpoint)
        self.accelerator.scaler.load_state_dict(load_json_state(path))

    def _save_rng_state(self, output_dir: str) -> None:
        if is_torch_xla_available():
            return super()._save_rng_state(output_dir)
        # A process can get here before the main one has created the folder.
        os.makedirs(output_dir, exist_ok=True)
        save_rng_state(rng_state_file(output_dir, self.args.process_index, self.args.world_size))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        path = rng_state_file(checkpoint, self.args.process_index, self.args.world_size)
        if not path.is_file() or is_torch_xla_available():
            return super()._load_rng_state(checkpoint)  # a pickled checkpoint, or none: the Trainer logs it
        load_rng_state(path)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            # The Trainer ends `_save` with a pickled `training_args.bin`: replaced by its JSON form.
            Path(output_dir, TRAINING_ARGS_NAME).unlink(missing_ok=True)
            Path(output_dir, TRAINING_ARGS_FILE).write_text(self.args.to_json_string())
