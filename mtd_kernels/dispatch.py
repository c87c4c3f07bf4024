"""Chooses the CUDA implementation of each op: Triton, the hand-written CUDA kernels, or the chain.

``MTD_CUDA_BACKEND=auto|triton|cuda|torch`` (or :func:`set_cuda_backend`) overrides the choice;
``auto`` takes the first available of :data:`AUTO_ORDER`, else the chain.  Triton covers float32,
float16 and bfloat16; other dtypes (float64) fall back to the CUDA extension or the chain.
Nothing here touches a GPU at import time.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

_BACKENDS = ("auto", "triton", "cuda", "torch")
# What ``auto`` tries, in order, before the chain; a benchmark may reorder it (one line on purpose).
AUTO_ORDER = ("triton", "cuda")
_override: Optional[str] = None


def set_cuda_backend(name: Optional[str]) -> None:
    """Force a CUDA backend for all ops (None restores the environment/default choice)."""
    global _override
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"unknown CUDA backend {name!r}; choose one of {_BACKENDS}")
    _override = name


def cuda_backend() -> str:
    name = _override or os.environ.get("MTD_CUDA_BACKEND", "auto").lower()
    if name not in _BACKENDS:
        raise ValueError(f"MTD_CUDA_BACKEND={name!r} is not one of {_BACKENDS}")
    return name


def _triton_kernel(op: str) -> Optional[Callable]:
    try:
        from . import triton as mtd_triton
    except Exception:  # triton missing or broken: fall through
        return None
    kernel = getattr(mtd_triton, op, None) if getattr(mtd_triton, "AVAILABLE", False) else None
    if kernel is None:
        return None

    def run(x, *args):
        # Triton covers fp32/fp16/bf16; anything else (e.g. float64) takes the next backend.
        if mtd_triton.supports(x):
            return kernel(x, *args)
        fallback = _cuda_kernel(op) or _chain(op)
        return fallback(x, *args)

    return run


def _chain(op: str) -> Callable:
    from .ops._register import OPS

    return OPS[op]["reference"]


def _cuda_kernel(op: str) -> Optional[Callable]:
    from ._loader import load_extension

    ext = load_extension()
    return getattr(ext, f"{op}_cuda", None) if ext is not None else None


def cuda_kernel(op: str) -> Optional[Callable]:
    """The kernel to run ``op`` on a CUDA tensor, or None for the unfused PyTorch chain."""
    backend = cuda_backend()
    if backend == "torch":
        return None
    if backend == "triton":
        return _triton_kernel(op)
    if backend == "cuda":
        return _cuda_kernel(op)
    finders = {"triton": _triton_kernel, "cuda": _cuda_kernel}
    for name in AUTO_ORDER:
        kernel = finders[name](op)
        if kernel is not None:
            return kernel
    return None
