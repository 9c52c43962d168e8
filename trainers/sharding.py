"""Sharded training (FSDP, DeepSpeed ZeRO-3) seen from the scripts: a launch that silently did not distribute, the
trained model as one plain module for evaluation and the Hub folder, and FSDP2 optimizer checkpoints that resume
when some parameters have no optimizer state yet."""

import os

from transformers import PreTrainedModel


def check_launch(training_args) -> None:
    """Fail when `accelerate launch` started several processes but each trains alone: on a machine without a GPU,
    accelerate 1.x runs FSDP and DeepSpeed configs as independent single-process jobs (no process group, no error)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:
        kind = "FSDP" if os.environ.get("ACCELERATE_USE_FSDP") == "true" else (
            "DeepSpeed" if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else "this")
        raise RuntimeError(
            f"accelerate launched {launched} processes but none joined a process group, so each would train its own "
            f"copy of the model: accelerate runs {kind} configs on GPUs only. On CPU launch "
            "`--config_file examples/configs/ddp_cpu.yaml` (DDP over gloo) instead."
        )


def is_sharded(trainer) -> bool:
    """True when no single process holds the whole model: FSDP, or DeepSpeed ZeRO stage 3."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    return plugin is not None and plugin.zero_stage == 3


def _plain_class(model) -> type:
    # FSDP2's `fully_shard` swaps the class for a generated `FSDP<Name>` subclass: the model's own class is below it.
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))


def unsharded_model(trainer, model: PreTrainedModel) -> PreTrainedModel | None:
    """The trained `model` as a plain module holding every weight, on the main process (None on the others); without
    sharding, `model` itself. Under FSDP / ZeRO-3 the full state dict is gathered (a collective: call it on every
    process) with accelerate's `get_state_dict` (FSDP2: `get_model_state_dict(full_state_dict=True,
    cpu_offload=True)`) and loaded into a fresh instance of the model's class, on the main process's device."""
    if not is_sharded(trainer):
        return model if trainer.is_world_process_zero() else None
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return None
    plain = _plain_class(model)(model.config)
    missing, unexpected = plain.load_state_dict(state_dict, strict=False)
    # Tied weights (lm_head <- embeddings) may appear under one name only; anything else missing is an error.
    tied = set(getattr(plain, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"Gathered state dict does not match {type(plain).__name__}: missing "
                           f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    plain.tie_weights()
    return plain.to(trainer.args.device)


# ---------------------------------------------------------------------------------- FSDP2 optimizer checkpoints
FSDP_OPTIMIZER_DIR = "optimizer_0"  # accelerate's folder of the DCP-sharded optimizer state


def sharded_optimizer_dir(trainer, checkpoint: str) -> str | None:
    """The DCP optimizer folder of `checkpoint` when the run is FSDP2 with SHARDED_STATE_DICT, else None."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    folder = os.path.join(checkpoint, FSDP_OPTIMIZER_DIR)
    if plugin is None or plugin.fsdp_version != 2 or "SHARDED" not in str(plugin.state_dict_type):
        return None
    return folder if os.path.isdir(folder) else None


def load_sharded_optimizer(trainer, folder: str) -> list[str]:
    """Load accelerate's FSDP2 DCP optimizer folder; returns the parameters that start from a fresh state.

    Written by hand because accelerate's `load_fsdp_optimizer` needs a state for every trainable parameter, while the
    optimizer only has one for parameters that already got a gradient (a CLIP tower's unused `post_layernorm`, heads
    of batch types not seen yet): such parameters keep the fresh state DCP's `allow_partial_load` leaves them. A
    parameter whose state is only partly in the folder is an error."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict,
    )

    model, optimizer = trainer.model, trainer.optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    config = trainer.accelerator.state.fsdp_plugin.state_dict_config  # the options accelerate saves with
    options = StateDictOptions(full_state_dict=False, cpu_offload=getattr(config, "offload_to_cpu", False))
    template = {"optimizer": get_optimizer_state_dict(model, optimizer, options=options)}  # default state per param
    reader = FileSystemReader(folder)
    saved = set(reader.read_metadata().state_dict_metadata)
    fresh = []
    for name, entries in template["optimizer"]["state"].items():
        present = [f"optimizer.state.{name}.{key}" in saved for key in entries]
        if any(present) and not all(present):
            raise RuntimeError(f"{folder}: the optimizer state of {name} is incomplete; the checkpoint is damaged.")
        if not any(present):
            fresh.append(name)
    load(template, storage_reader=reader, planner=DefaultLoadPlanner(allow_partial_load=bool(fresh)))
    set_optimizer_state_dict(model, optimizer, template["optimizer"], options=options)
    return fresh
