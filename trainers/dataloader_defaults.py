"""Data-loader settings chosen for the machine when the user left them unset.

On a GPU the main process should only launch kernels: with batches built in the main process, cosmo-tiny on one
H200 ran 13.7 steps/s, with 8 workers 21.1 (bench/README.md). On a CPU the workers would take cores from the
compute threads, so the default of 0 stays there.
"""

import os

from torch.utils.data import IterableDataset

MAX_AUTO_WORKERS = 8


def option_given(argv, name: str) -> bool:
    """Whether `--name` (or `--name=value`) is on the command line `argv`."""
    flag = f"--{name}"
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_dataloader_workers(training_args, argv, train_dataset=None) -> int:
    """On CUDA, unless `--dataloader_num_workers` is in `argv`: `min(8, cores per local process - 1)` workers, kept
    alive across epochs (unless `--dataloader_persistent_workers` is given, or the dataset changes per epoch through
    `set_epoch`, which live workers would not see). Streamed (iterable) data keeps the user's setting, since the
    worker count decides how its shards are split. Returns the worker count in force."""
    workers = training_args.dataloader_num_workers
    if (training_args.device.type != "cuda" or option_given(argv, "dataloader_num_workers")
            or isinstance(train_dataset, IterableDataset) or _is_streamed(train_dataset)):
        return workers
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    workers = max(0, min(MAX_AUTO_WORKERS, usable_cores() // local_processes - 1))
    training_args.dataloader_num_workers = workers
    if workers and not option_given(argv, "dataloader_persistent_workers") and not hasattr(train_dataset, "set_epoch"):
        training_args.dataloader_persistent_workers = True
    return workers


def _is_streamed(dataset) -> bool:
    """A `datasets.IterableDataset` (a torch one only when torch was imported before datasets)."""
    from datasets import IterableDataset as StreamedDataset

    return isinstance(dataset, StreamedDataset)


__all__ = ["auto_dataloader_workers", "option_given", "usable_cores"]
