"""A run is what its launcher asked for, or it stops.

``accelerate launch`` passes its config to the processes as environment variables
(``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, ``ACCELERATE_USE_FSDP``,
``ACCELERATE_USE_CPU``; torchrun's ``WORLD_SIZE``). ``requested()`` reads that request,
``accelerator_kwargs()`` builds an ``Accelerator`` that can honour it (on a machine without
GPUs too), and ``check()`` / ``describe()`` refuse to train when accelerate resolved
something else: never a silent fallback to plain data parallelism or to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from accelerate.utils import InitProcessGroupKwargs, parse_flag_from_env
from torch.distributed.tensor import DTensor

from safedpo.config import ConfigError


@dataclass(frozen=True)
class Request:
    """What the launcher asked for. ``kind``: 'DEEPSPEED', 'FSDP', 'DDP' or 'NO'."""
    kind: str
    num_processes: int
    zero_stage: int | None = None


def requested() -> Request:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return Request("DEEPSPEED", world, int(stage) if stage else None)
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return Request("FSDP", world)
    return Request("DDP" if world > 1 else "NO", world)


def accelerator_kwargs(request: Request) -> dict:
    """Extra ``Accelerator`` arguments for a multi-process run on a machine without GPUs.

    accelerate picks a process-group backend only for accelerator devices
    (``PartialState._prepare_backend``). DDP and FSDP get ``cpu=True`` (MULTI_CPU over gloo;
    FSDP then fails ``check``, see there). DeepSpeed must not get ``cpu=True`` (accelerate
    would drop its plugin and run MULTI_CPU); it gets the gloo backend by name instead,
    without which DeepSpeed's comm starts but accelerate counts one process per process."""
    if request.num_processes <= 1 or torch.cuda.is_available():
        return {}
    if request.kind == "DEEPSPEED":
        return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {"cpu": True}


def check(accelerator, request: Request) -> None:
    """ConfigError unless accelerate resolved the requested distributed type and size."""
    got = accelerator.distributed_type.name
    asked = f"{request.kind} on {request.num_processes} processes"
    if request.kind in ("DEEPSPEED", "FSDP") and got != request.kind:
        why = {("DEEPSPEED", True): "use_cpu: true (ACCELERATE_USE_CPU) drops the DeepSpeed "
                                    "plugin; set use_cpu: false (configs/accelerate/cpu/)",
               ("FSDP", False): "the installed accelerate turns a run into FSDP only on "
                                "GPU-like devices, not on CPU; use DeepSpeed ZeRO-3 "
                                "(configs/accelerate/cpu/zero3.yaml) or GPUs"}.get(
            (request.kind, parse_flag_from_env("ACCELERATE_USE_CPU")),
            "check the accelerate config")
        raise ConfigError(f"the launcher asked for {asked} but accelerate resolved {got}: {why}")
    if accelerator.num_processes != request.num_processes:
        raise ConfigError(
            f"the launcher started {request.num_processes} processes but accelerate counts "
            f"{accelerator.num_processes} ({got}): each process would train alone; check the "
            "accelerate config (distributed_type, use_cpu)")


def describe(accelerator, model, request: Request) -> dict:
    """What really runs, from the prepared model (for train_summary.json), e.g.
    ``{"type": "DEEPSPEED", "zero_stage": 3, "num_processes": 2}``; ConfigError when the
    prepared model is not sharded as requested."""
    got = {"type": accelerator.distributed_type.name,
           "num_processes": accelerator.num_processes}
    if got["type"] == "DEEPSPEED":
        got["zero_stage"] = model.zero_optimization_stage()
        if request.zero_stage is not None and got["zero_stage"] != request.zero_stage:
            raise ConfigError(f"the launcher asked for ZeRO stage {request.zero_stage} but "
                              f"DeepSpeed runs stage {got['zero_stage']}: check zero_stage in "
                              "the accelerate/DeepSpeed config")
    elif got["type"] == "FSDP":
        got["fsdp_version"] = accelerator.state.fsdp_plugin.fsdp_version
        if got["fsdp_version"] == 2 and not all(isinstance(p, DTensor)
                                                for p in model.parameters()):
            raise ConfigError("FSDP was requested but the prepared model's parameters are not "
                              "sharded (not DTensors)")
    return got
