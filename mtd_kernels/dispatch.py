"""Chooses the CUDA implementation of each op: Triton, the hand-written CUDA kernels, or the chain.

``MTD_CUDA_BACKEND=auto|triton|cuda|torch`` (or :func:`set_cuda_backend`) overrides the choice;
``auto`` takes the first of :data:`AUTO_ORDER` that can run the op at the input's dtype, else the
chain.  An explicitly chosen backend that cannot run a dtype (neither fused backend has a float64
kernel) gives the chain.  The choice is made once per (backend, op, dtype) and cached.  Nothing
here touches a GPU at import time.

Dependencies run one way: op specs (``mtd_kernels.ops``) -> backends (``mtd_kernels._C``,
``mtd_kernels.triton``) -> this module -> registration (``mtd_kernels._register``).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import torch

from ._loader import load_extension

_BACKENDS = ("auto", "triton", "cuda", "torch")
# What ``auto`` tries, in order, before the chain.
AUTO_ORDER = ("triton", "cuda")
# dtypes both fused CUDA backends implement
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_override: Optional[str] = None


def set_cuda_backend(name: Optional[str]) -> None:
    """Force a CUDA backend for all ops (None restores the environment/default choice)."""
    global _override
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"unknown CUDA backend {name!r}; choose one of {_BACKENDS}")
    _override = name


def cuda_backend() -> str:
    """The CUDA backend setting in force: :func:`set_cuda_backend`, else ``MTD_CUDA_BACKEND``, else auto."""
    name = _override or os.environ.get("MTD_CUDA_BACKEND", "auto").lower()
    if name not in _BACKENDS:
        raise ValueError(f"MTD_CUDA_BACKEND={name!r} is not one of {_BACKENDS}")
    return name


def cuda_kernel(op: str, dtype: torch.dtype = torch.float32) -> Optional[Callable]:
    """The kernel that runs ``op`` on a CUDA tensor of ``dtype``, or None for the unfused chain.

    A kernel takes the op's arguments ``(x, *weights, bias, stride, padding, dilation, relu)``.
    """
    return resolve(cuda_backend(), op, dtype)


@functools.lru_cache(maxsize=None)
def resolve(backend: str, op: str, dtype: torch.dtype) -> Optional[Callable]:
    """The cached choice behind :func:`cuda_kernel` (``resolve.cache_clear()`` forgets it)."""
    if backend == "torch" or dtype not in FUSED_DTYPES:
        return None
    for name in AUTO_ORDER if backend == "auto" else (backend,):
        kernel = _FINDERS[name](op)
        if kernel is not None:
            return kernel
    return None


def _triton_kernel(op: str) -> Optional[Callable]:
    try:
        from . import triton as mtd_triton
    except Exception:  # triton broken against this torch: fall through
        return None
    return getattr(mtd_triton, op, None) if mtd_triton.available() else None


def _cuda_kernel(op: str) -> Optional[Callable]:
    ext = load_extension()
    return getattr(ext, f"{op}_cuda", None) if ext is not None else None


_FINDERS = {"triton": _triton_kernel, "cuda": _cuda_kernel}
