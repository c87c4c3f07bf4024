"""LowRankLinear: Linear(in -> R, no bias) then Linear(R -> out, bias), from a truncated SVD."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..decompose import SVDFactors, check_svd_rank, svd_decompose
from ..decompose.costs import svd_macs
from ._factorized import FactorizedModule


class LowRankLinear(FactorizedModule):
    """Rank-R factorisation of an nn.Linear.  ``backend`` is accepted for a uniform layer API, but
    both values run the same two matmuls (there is no fused op for linears)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 backend: str = "torch", device=None, dtype=None):
        super().__init__(backend)
        self.in_features, self.out_features = in_features, out_features
        self.rank = check_svd_rank(rank, out_features, in_features)
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)  # (R, in)
        self.last = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)  # (out, R)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, backend: str = "torch", *,
                    factors: Optional[SVDFactors] = None) -> "LowRankLinear":
        """Truncated SVD of ``linear`` at ``rank`` (or precomputed ``factors``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None, backend=backend,
                    device=w.device, dtype=w.dtype)
        if factors is None:
            factors = svd_decompose(w, rank)
        elif factors.rank != rank:
            raise ValueError(f"factors have rank {factors.rank}, expected {rank}")
        with torch.no_grad():
            layer.first.weight.copy_(factors.first)
            layer.last.weight.copy_(factors.last)
            if linear.bias is not None:
                layer.last.bias.copy_(linear.bias)
        layer.rel_error = factors.rel_error
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs(self, input_hw: Optional[Sequence[int]] = None) -> int:
        """MACs for one input row (``input_hw`` is ignored; accepted for a uniform API)."""
        return svd_macs((self.out_features, self.in_features), (self.rank,))

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        w = self.first.weight
        dense = nn.Linear(self.in_features, self.out_features, bias=self.last.bias is not None,
                          device=w.device, dtype=w.dtype)
        dense.weight.copy_(self.last.weight @ self.first.weight)
        if self.last.bias is not None:
            dense.bias.copy_(self.last.bias)
        return dense

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, rank={self.rank}, bias={self.last.bias is not None}, "
                f"rel_error={self.rel_error:.4g}")
