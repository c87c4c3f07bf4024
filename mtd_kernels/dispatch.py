"""Chooses the CUDA kernels of each op: Triton, the hand-written CUDA kernels, or the chain.

``MTD_CUDA_KERNELS=auto|triton|cuda|torch`` (or :func:`set_cuda_kernels`) overrides the choice
(``MTD_CUDA_BACKEND`` / :func:`set_cuda_backend`, the old names, still work);
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
ENV_NAMES = ("MTD_CUDA_KERNELS", "MTD_CUDA_BACKEND")  # the first set wins; the second is the old name
_override: Optional[str] = None


def set_cuda_kernels(name: Optional[str]) -> None:
    """Force the CUDA kernels of all ops (None restores the environment/default choice)."""
    global _override
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"unknown CUDA backend {name!r} (CUDA kernels); choose one of {_BACKENDS}")
    _override = name


def cuda_kernels() -> str:
    """The CUDA kernel setting in force: :func:`set_cuda_kernels`, else ``MTD_CUDA_KERNELS`` (or the old
    ``MTD_CUDA_BACKEND``), else auto."""
    if _override:
        return _override
    env = next((n for n in ENV_NAMES if os.environ.get(n)), None)
    name = os.environ[env].lower() if env else "auto"
    if name not in _BACKENDS:
        raise ValueError(f"{env}={name!r} is not one of {_BACKENDS}")
    return name


set_cuda_backend = set_cuda_kernels  # the old names
cuda_backend = cuda_kernels


def cuda_kernel(op: str, dtype: torch.dtype = torch.float32) -> Optional[Callable]:
    """The kernel that runs ``op`` on a CUDA tensor of ``dtype``, or None for the unfused chain.

    A kernel takes the op's arguments ``(x, *weights, bias, stride, padding, dilation, relu)``.
    """
    return resolve(cuda_kernels(), op, dtype)


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
