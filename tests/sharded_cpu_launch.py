"""Run a script under `accelerate launch` with accelerate's FSDP or DeepSpeed code path on CPU (gloo), for the tests.

    accelerate launch --config_file fsdp_cpu.yaml tests/sharded_cpu_launch.py examples/pretrain.py [args...]

accelerate 1.x enables FSDP and DeepSpeed only on GPUs and similar devices: without one, such a config runs as
independent single-process jobs (no error), and with `ACCELERATE_USE_CPU` the plugin is dropped for plain MULTI_CPU
(DDP). torch's FSDP2 (`fully_shard`) and DeepSpeed's CPU accelerator work on CPU with gloo, so this launcher keeps
the plugin: the processes join a gloo group (MULTI_CPU) and the state is then switched to FSDP / DEEPSPEED, from
where accelerate and the Trainer prepare, train, checkpoint and gather exactly as they do on GPUs.
"""

import os
import runpy
import sys

os.environ["ACCELERATE_USE_CPU"] = "true"  # processes join a gloo process group

from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

_init = AcceleratorState.__init__


def _init_keeping_plugin(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
    elif deepspeed_plugin is not None:
        self.distributed_type = DistributedType.DEEPSPEED
        self._mixed_precision = "no"  # as accelerate sets it: DeepSpeed's own config carries the precision
        deepspeed_plugin.set_mixed_precision("no")
        deepspeed_plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = deepspeed_plugin
    PartialState._shared_state["distributed_type"] = self.distributed_type


AcceleratorState.__init__ = _init_keeping_plugin

if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
