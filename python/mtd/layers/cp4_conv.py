"""CP4Conv2d: 1x1 (S->R) -> depthwise kh x 1 -> depthwise 1 x kw -> 1x1 (R->T) + bias (Lebedev 2015)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

import mtd_kernels  # noqa: F401  (registers torch.ops.mtd)

from ..decompose import CP4Factors, check_cp_rank, cp4_decompose_conv
from ..decompose.costs import cp4_macs
from .compressible import check_conv_for
from .base import FactorizedConv2d, conv_geometry


class CP4Conv2d(FactorizedConv2d):
    """CP4-decomposed conv; the vertical factor carries the H geometry, the horizontal one the W."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1, padding=0,
                 dilation=1, bias: bool = True, backend: str = "fused", relu: bool = False,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, backend, relu)
        self.rank = check_cp_rank(rank, (out_channels, in_channels, *self.kernel_size), "cp4")
        kw = dict(device=device, dtype=dtype)
        (kh, kwd), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        pad_v, pad_h = ("same", "same") if self.padding == "same" else ((self.padding[0], 0), (0, self.padding[1]))
        self.first = nn.Conv2d(in_channels, rank, 1, bias=False, **kw)  # (R, S, 1, 1)
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), pad_v, (dh, 1), groups=rank, bias=False,
                                  **kw)  # (R, 1, kh, 1)
        self.horizontal = nn.Conv2d(rank, rank, (1, kwd), (1, sw), pad_h, (1, dw), groups=rank, bias=False,
                                    **kw)  # (R, 1, 1, kw)
        self.last = nn.Conv2d(rank, out_channels, 1, bias=bias, **kw)  # (T, R, 1, 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, backend: str = "fused", *, relu: bool = False,
                  factors: Optional[CP4Factors] = None, **decomp_kwargs) -> "CP4Conv2d":
        """Decompose ``conv`` at ``rank`` (or use precomputed ``factors``); kwargs go to cp4_decompose_conv."""
        check_conv_for(conv, "cp4")
        layer = cls(rank=rank, backend=backend, relu=relu, **conv_geometry(conv))
        if factors is None:
            factors = cp4_decompose_conv(conv.weight, rank, **decomp_kwargs)
        elif factors.rank != rank:
            raise ValueError(f"factors have rank {factors.rank}, expected {rank}")
        layer._load_factors([factors.first, factors.vertical, factors.horizontal, factors.last], conv,
                            factors.rel_error)
        return layer

    def _spatial_convs(self) -> Sequence[nn.Conv2d]:
        return (self.vertical, self.horizontal)

    def _fused_op(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        return torch.ops.mtd.cp4_conv2d(x, self.first.weight, self.vertical.weight, self.horizontal.weight,
                                        self.last.weight, self.last.bias, list(self.stride), padding,
                                        list(self.dilation), self.relu)

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("tr,ri,rj,rs->tsij", self.last.weight[:, :, 0, 0], self.vertical.weight[:, 0, :, 0],
                            self.horizontal.weight[:, 0, 0, :], self.first.weight[:, :, 0, 0])

    def macs(self, input_hw: Sequence[int]) -> int:
        return cp4_macs(self.kernel_shape, (self.rank,), input_hw, self.output_hw(input_hw))
