"""TuckerConv2d: 1x1 (S->R1) -> dense kh x kw core (R1->R2) -> 1x1 (R2->T) + bias."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

import mtd_kernels  # noqa: F401  (registers torch.ops.mtd)

from ..decompose import TuckerFactors, check_tucker_ranks, tucker2_decompose_conv
from ..decompose.costs import tucker2_macs
from .compressible import check_conv_for
from .base import FactorizedConv2d, conv_geometry


class TuckerConv2d(FactorizedConv2d):
    """Tucker-2-decomposed conv; the core carries stride, padding and dilation.

    ``ranks=(r1, r2)``: r1 channels after the first 1x1, r2 after the core.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, ranks, stride=1, padding=0,
                 dilation=1, bias: bool = True, backend: str = "fused", relu: bool = False,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, backend, relu)
        self.ranks = check_tucker_ranks(ranks, (out_channels, in_channels, *self.kernel_size))
        r1, r2 = self.ranks
        kw = dict(device=device, dtype=dtype)
        self.first = nn.Conv2d(in_channels, r1, 1, bias=False, **kw)  # (R1, S, 1, 1)
        self.core = nn.Conv2d(r1, r2, self.kernel_size, self.stride, self.padding, self.dilation, bias=False,
                              **kw)  # (R2, R1, kh, kw)
        self.last = nn.Conv2d(r2, out_channels, 1, bias=bias, **kw)  # (T, R2, 1, 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks, backend: str = "fused", *, relu: bool = False,
                  factors: Optional[TuckerFactors] = None, **decomp_kwargs) -> "TuckerConv2d":
        """Decompose ``conv`` at ``ranks=(r1, r2)`` (or use ``factors``); kwargs go to tucker2_decompose_conv."""
        check_conv_for(conv, "tucker")
        layer = cls(ranks=ranks, backend=backend, relu=relu, **conv_geometry(conv))
        if factors is None:
            factors = tucker2_decompose_conv(conv.weight, layer.ranks, **decomp_kwargs)
        elif tuple(factors.ranks) != layer.ranks:
            raise ValueError(f"factors have ranks {factors.ranks}, expected {layer.ranks}")
        layer._load_factors([factors.first, factors.core, factors.last], conv, factors.rel_error)
        return layer

    def _spatial_convs(self) -> Sequence[nn.Conv2d]:
        return (self.core,)

    def _fused_op(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        return torch.ops.mtd.tucker_conv2d(x, self.first.weight, self.core.weight, self.last.weight,
                                           self.last.bias, list(self.stride), padding, list(self.dilation),
                                           self.relu)

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("tb,baij,as->tsij", self.last.weight[:, :, 0, 0], self.core.weight,
                            self.first.weight[:, :, 0, 0])

    def macs(self, input_hw: Sequence[int]) -> int:
        return tucker2_macs(self.kernel_shape, self.ranks, input_hw, self.output_hw(input_hw))
