"""mtd_kernels — the ``torch.ops.mtd`` ops: fused CP / CP4 / Tucker-2 convolutions and the cross-layer rank bridge.

Importing is safe on any machine: no GPU is queried, Triton is optional, and a missing compiled
extension only means the CPU ops run their (warned-about) pure-PyTorch implementation.

On CPU each op chooses per call shape between its fused kernel and the unfused chain of oneDNN
convolutions, by timing both on the first call of that shape (``MTD_CPU_KERNELS=fused|chain|auto``
forces one, ``MTD_CPU_PATH`` is its old name; :func:`cpu_path_cache` shows the choices). On CUDA
``MTD_CUDA_KERNELS`` picks Triton, the hand-written kernels or the chain (:mod:`.dispatch`).

The CPU micro-kernels (the small GEMMs of the 1x1 factors, the depthwise stencil) are compiled for AVX-512,
AVX2+FMA and baseline x86-64 and picked at load time from the CPU's features (:func:`cpu_isa` names the
level; ``MTD_CPU_ISA=avx2|baseline`` lowers it, for tests and comparisons).
"""
from __future__ import annotations

import torch

from ._loader import extension_error, load_extension
from ._register import register_all, register_cpu_fallbacks
from .dispatch import cuda_backend, cuda_kernels, set_cuda_backend, set_cuda_kernels
from .ops import OPS
from .ops._signature import function

register_all()  # defines the schemas: must come before the extension registers its CPU kernels
_ext = load_extension()
if _ext is None:
    register_cpu_fallbacks()


def extension_available() -> bool:
    """True when the compiled C++ (and maybe CUDA) kernels are loaded."""
    return _ext is not None


def cpu_path_cache() -> dict:
    """{shape key: 'fused' | 'chain'}: the CPU path each call shape measured fastest (see ``MTD_CPU_KERNELS``)."""
    return dict(_ext.cpu_path_cache()) if _ext is not None else {}


def clear_cpu_path_cache() -> None:
    """Forget the measured CPU path choices (the next call of each shape measures again)."""
    if _ext is not None:
        _ext.clear_cpu_path_cache()


def cpu_isa() -> str:
    """'avx512', 'avx2' or 'baseline': the micro-kernels the CPU extension picked from this CPU's features at
    load time (``MTD_CPU_ISA=avx2|baseline`` lowers it, never raises it); 'none' without the extension."""
    return _ext.cpu_isa() if _ext is not None else "none"


def rank_run_pack(weights, meta) -> list:
    """The factors of a ``torch.ops.mtd.rank_run`` call in the CPU kernel's layouts, to pass as its ``packed``
    (so that no call packs them again); ``[]`` without the compiled extension (the op then packs nothing)."""
    return list(_ext.rank_run_pack(list(weights), [int(m) for m in meta])) if _ext is not None else []


def rank_run_plan(weights, meta):
    """``torch.ops.mtd.rank_run``'s CPU kernel bound to ``weights`` (split and packed once), or None without the
    compiled extension. ``plan(x)`` runs it without autograd or the dispatcher (the speed of a batch-1 call);
    ``plan.packed_from(weights)`` says whether these are still the very tensors packed, none changed in place."""
    return _ext.RankRunPlan(list(weights), [int(m) for m in meta]) if _ext is not None else None


def cuda_extension_available() -> bool:
    """True when the extension was built with the hand-written CUDA kernels."""
    return _ext is not None and bool(getattr(_ext, "has_cuda", lambda: False)())


# mtd_kernels.cp_conv2d, cp4_conv2d, tucker_conv2d, rank_bridge: each op with its schema's signature and defaults
for _op in OPS.values():
    globals()[_op.name] = function(_op.schema, getattr(torch.ops.mtd, _op.name), _op.name,
                                   f"torch.ops.mtd.{_op.name} with the defaults of its schema.\n{_op.doc}")
del _op


__all__ = [
    *OPS, "extension_available", "cuda_extension_available",
    "extension_error", "cuda_kernels", "set_cuda_kernels", "cuda_backend", "set_cuda_backend", "cpu_path_cache",
    "clear_cpu_path_cache", "cpu_isa",
]
