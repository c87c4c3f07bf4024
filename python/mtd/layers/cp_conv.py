"""CPConv2d: a conv as 1x1 (S->R) -> depthwise kh x kw on R channels -> 1x1 (R->T) + bias."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

import mtd_kernels  # noqa: F401  (registers torch.ops.mtd)

from ..decompose import CPFactors, check_cp_rank, cp_decompose_conv
from ..decompose.costs import cp3_macs
from .compressible import check_conv_for
from .base import FactorizedConv2d, conv_geometry


class CPConv2d(FactorizedConv2d):
    """CP3-decomposed conv; the depthwise factor carries stride, padding and dilation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1, padding=0,
                 dilation=1, bias: bool = True, backend: str = "fused", relu: bool = False,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, backend, relu)
        self.rank = check_cp_rank(rank, (out_channels, in_channels, *self.kernel_size), "cp3")
        kw = dict(device=device, dtype=dtype)
        self.first = nn.Conv2d(in_channels, rank, 1, bias=False, **kw)  # (R, S, 1, 1)
        self.depthwise = nn.Conv2d(rank, rank, self.kernel_size, self.stride, self.padding, self.dilation,
                                   groups=rank, bias=False, **kw)  # (R, 1, kh, kw)
        self.last = nn.Conv2d(rank, out_channels, 1, bias=bias, **kw)  # (T, R, 1, 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, backend: str = "fused", *, relu: bool = False,
                  factors: Optional[CPFactors] = None, **decomp_kwargs) -> "CPConv2d":
        """Decompose ``conv`` at ``rank`` (or use precomputed ``factors``); kwargs go to cp_decompose_conv."""
        check_conv_for(conv, "cp")
        layer = cls(rank=rank, backend=backend, relu=relu, **conv_geometry(conv))
        if factors is None:
            factors = cp_decompose_conv(conv.weight, rank, **decomp_kwargs)
        elif factors.rank != rank:
            raise ValueError(f"factors have rank {factors.rank}, expected {rank}")
        layer._load_factors([factors.first, factors.depthwise, factors.last], conv, factors.rel_error)
        return layer

    def _spatial_convs(self) -> Sequence[nn.Conv2d]:
        return (self.depthwise,)

    def _fused_op(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        return torch.ops.mtd.cp_conv2d(x, self.first.weight, self.depthwise.weight, self.last.weight,
                                       self.last.bias, list(self.stride), padding, list(self.dilation), self.relu)

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("tr,rij,rs->tsij", self.last.weight[:, :, 0, 0], self.depthwise.weight[:, 0],
                            self.first.weight[:, :, 0, 0])

    def macs(self, input_hw: Sequence[int]) -> int:
        return cp3_macs(self.kernel_shape, (self.rank,), input_hw, self.output_hw(input_hw))
