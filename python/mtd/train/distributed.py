"""Helpers for running training under ``torchrun`` (DistributedDataParallel).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`init_distributed`
reads them, picks NCCL on CUDA and gloo on CPU, and returns where this process runs. Without those
variables it is a no-op that describes a single process, so the same script runs either way.
Shard the data with ``TensorDataLoader(..., rank=info.rank, world_size=info.world_size)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from ..utils.device import pick_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs: its global ``rank``, ``world_size``, node-local rank and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints, logs and progress bars."""
    return get_rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from err


def init_distributed(backend: Optional[str] = None, device: Optional[Union[str, torch.device]] = None) -> DistInfo:
    """Join the process group described by torchrun's environment (or describe a single process)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size <= 1 and not is_distributed():
        return DistInfo(0, 1, 0, pick_device(device))
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)  # one GPU per process
        run_device = torch.device("cuda", local_rank)
    else:
        run_device = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if not is_distributed():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, run_device)


def wrap_ddp(model: nn.Module, info: DistInfo, *, channels_last: bool = False) -> nn.Module:
    """Move ``model`` to ``info.device`` (and channels_last) and wrap it in DDP when more than one process runs.

    The memory format is set before wrapping: DDP must see the parameters it will synchronise.
    """
    model = model.to(info.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.world_size <= 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in a single process)."""
    if is_distributed() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call at the end of a torchrun script)."""
    if is_distributed():
        dist.destroy_process_group()
