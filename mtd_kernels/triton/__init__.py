"""Fused Triton kernels of the ops (optional: everything here works without Triton installed).

``mtd_kernels.triton.cp_conv2d / cp4_conv2d / tucker_conv2d / rank_bridge`` take the op's arguments and return
the op's output layout.  ``AVAILABLE`` (or :func:`available`) says whether they can run here: Triton
imports and there is a CUDA device, or ``TRITON_INTERPRET=1`` (CPU interpreter).  It is computed on
first access, so importing this package never queries a GPU.
"""
from __future__ import annotations

from typing import Optional

import torch

_IMPORT_ERROR: Optional[str] = None
try:
    import triton  # noqa: F401
except Exception as exc:  # missing, or broken against this torch
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

if _IMPORT_ERROR is None:
    from ._common import interpreting
    from .cp4_conv2d import cp4_conv2d
    from .cp_conv2d import cp_conv2d
    from .rank_bridge import rank_bridge
    from .tucker_conv2d import tucker_conv2d


def import_error() -> Optional[str]:
    """Why Triton could not be imported (None if it was)."""
    return _IMPORT_ERROR


def available() -> bool:
    """True when the Triton kernels can run: Triton imports and a CUDA device exists (or the interpreter is on)."""
    if _IMPORT_ERROR is not None:
        return False
    return interpreting() or torch.cuda.is_available()


def __getattr__(name: str):
    # PEP 562: ``AVAILABLE`` is evaluated lazily, on access, never at import time.
    if name == "AVAILABLE":
        return available()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AVAILABLE", "available", "import_error"]
if _IMPORT_ERROR is None:
    __all__ += ["cp_conv2d", "cp4_conv2d", "tucker_conv2d", "rank_bridge"]
