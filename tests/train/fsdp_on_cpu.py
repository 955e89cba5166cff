"""Imported by processes that test FSDP on CPU (see test_sharded.py).

accelerate (1.15 and 1.16, tried) turns a run into FSDP only when its process group is on a GPU-like device:
``AcceleratorState.__init__`` sets ``distributed_type = FSDP`` and ``fsdp_plugin`` inside its
``elif self.distributed_type in [MULTI_GPU, MULTI_XPU, ...]`` branch, which MULTI_CPU never
enters (so safedpo refuses such a run, see safedpo.train.distributed.check). This helper makes
those two assignments on CPU too; everything after them is accelerate's own FSDP code
(``prepare`` -> ``fsdp2_prepare_model`` -> torch ``fully_shard``, state-dict gathering,
``save_state``/``load_state``), as it runs on GPUs.
"""

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = \
            DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_fsdp_on_cpu
