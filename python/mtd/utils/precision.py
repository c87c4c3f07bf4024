"""One precision setting for every training and forward-only pass: bf16 autocast + channels_last where the
hardware computes bf16 natively, fp32 elsewhere.

Why: on a 2-core Zen 4 (AVX512_BF16) a training step of the 39x VGG16 student costs 541 ms in fp32 NCHW and
156 ms in bf16 + channels_last; a forward-only pass 139 ms against 34 ms (``benchmarks/results/finetune_speed.md``).
On a CPU without native bf16 (AVX2 only) oneDNN has to emulate it, so ``"auto"`` stays fp32 there (not measured
on such a host yet). The verification that decides an accuracy promise always runs fp32 (``mtd.planner.verify``).

Channels_last is asked of the inputs only: oneDNN and cuDNN run a convolution channels_last when its input is,
and the output stays channels_last through BatchNorm, ReLU and pooling, so no model is mutated.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Union

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: Union[str, torch.device]) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16; a CPU with AVX512_BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # private but long-lived torch helpers (torch.cpu, since 2.3); a torch without them reports no support
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)


@dataclass(frozen=True)
class Precision:
    """How a pass runs: ``dtype`` of autocast (None: fp32, no autocast) and the input memory format."""

    dtype: Optional[torch.dtype]
    channels_last: bool
    device_type: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` (a no-op context in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the pass's memory format (4-D image batches only)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


FP32 = Precision(None, False, "cpu")


def resolve_precision(precision: Union[str, Precision, None], device: Union[str, torch.device]) -> Precision:
    """The :class:`Precision` that ``precision`` ("auto", "bf16", "fp32") names on ``device``.

    ``"auto"``: bf16 + channels_last where :func:`native_bf16`; otherwise fp32, channels_last on CPUs (oneDNN's
    fp32 convolutions are faster on it: 541 -> 272 ms a step of the 39x VGG16 student on Zen 4).
    ``"bf16"`` forces bf16 (emulated, slow, on CPUs without native support); ``"fp32"`` is NCHW fp32 as before.
    """
    if isinstance(precision, Precision):
        return precision
    device = torch.device(device)
    name = "auto" if precision is None else precision
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if name == "fp32":
        return Precision(None, False, device.type)
    if name == "bf16" or native_bf16(device):
        return Precision(torch.bfloat16, True, device.type)
    return Precision(None, device.type == "cpu", device.type)
