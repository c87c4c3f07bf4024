"""Helpers for running training under ``torchrun`` (DistributedDataParallel).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`init_distributed`
reads them, picks NCCL on CUDA and gloo on CPU, and returns where this process runs. Without those
variables it is a no-op that describes a single process, so the same script runs either way.
Shard the data with ``TensorDataLoader(..., rank=info.rank, world_size=info.world_size)``.

The collectives below (:func:`broadcast_object`, :func:`sync_module`, :func:`average_batchnorm_stats`,
:func:`sum_rows`) are what ``mtd.compress`` uses to split its work over the ranks and to keep every rank's
choices identical; each is a no-op in a single process. Objects travel between the job's own ranks only
(``broadcast_object`` pickles: never point it at data from outside the job).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Optional, Sequence, TypeVar, Union

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


# The longest a rank may wait in one collective: mtd.compress's ranks wait for each other while candidates are
# decomposed and scored (unevenly split work), so this is generous; MTD_DIST_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 2 * 3600


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
        # a rank that waits longer than this for the others fails with an error instead of hanging
        timeout = timedelta(seconds=_env_int("MTD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timeout)
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
    """Sum ``tensor`` over all ranks in place (no-op in a single process). Rows that each rank filled for its
    own items, zeros elsewhere, come back bit for bit as their owner computed them (adding zeros is exact)."""
    if is_distributed() and get_world_size() > 1:
        device = _comm_device()
        if tensor.device == device:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:  # NCCL reduces CUDA tensors only, gloo CPU ones best
            moved = tensor.to(device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved)
    return tensor


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


T = TypeVar("T")


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th one from index ``rank`` (all of them alone)."""
    return list(items[get_rank()::get_world_size()])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it, on every rank (pickled: for objects this job made, never foreign data)."""
    if not is_distributed() or get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def sync_module(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s parameters and buffers into every rank's ``model`` (in place): the ranks then hold
    the same model whatever rounding or non-determinism their own passes had."""
    if is_distributed() and get_world_size() > 1:
        device = _comm_device()
        for tensor in list(model.parameters()) + list(model.buffers()):
            moved = tensor.data.to(device)
            dist.broadcast(moved, src=src)
            tensor.data.copy_(moved)
    return model


@torch.no_grad()
def average_batchnorm_stats(model: nn.Module) -> nn.Module:
    """Average every BatchNorm's running mean and variance over the ranks (in place): statistics each rank
    estimated on its shard of the images become those of all the images (equal shards)."""
    if is_distributed() and get_world_size() > 1:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                for t in (m.running_mean, m.running_var):
                    if t is not None:
                        all_reduce_sum(t).div_(get_world_size())
    return model


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (and so fills a cache it writes), the other ranks after it (and read it)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call at the end of a torchrun script)."""
    if is_distributed():
        dist.destroy_process_group()
