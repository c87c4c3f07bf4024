"""Result types of the decompositions: the factors already shaped as conv / linear weights.

All tensors are float64 on the CPU; a layer casts them to its own dtype and device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CPFactors:
    """CP3 of a (T, S, kh, kw) kernel: W[t,s,i,j] = sum_r last[t,r] * depthwise[r,i,j] * first[r,s]."""

    first: torch.Tensor  # (R, S, 1, 1)
    depthwise: torch.Tensor  # (R, 1, kh, kw)
    last: torch.Tensor  # (T, R, 1, 1)
    rel_error: float  # ||W - W_hat|| / ||W||
    n_iter: int = 0  # ALS sweeps of the attempt that was kept

    @property
    def rank(self) -> int:
        return int(self.first.shape[0])

    @property
    def ranks(self) -> tuple:
        """``(rank,)``: every factor type has ``ranks`` (TuckerFactors has two)."""
        return (self.rank,)


@dataclass
class CP4Factors:
    """CP4 of a (T, S, kh, kw) kernel: W[t,s,i,j] = sum_r last[t,r] vertical[r,i] horizontal[r,j] first[r,s]."""

    first: torch.Tensor  # (R, S, 1, 1)
    vertical: torch.Tensor  # (R, 1, kh, 1)
    horizontal: torch.Tensor  # (R, 1, 1, kw)
    last: torch.Tensor  # (T, R, 1, 1)
    rel_error: float
    n_iter: int = 0

    @property
    def rank(self) -> int:
        return int(self.first.shape[0])

    @property
    def ranks(self) -> tuple:
        """``(rank,)``: every factor type has ``ranks`` (TuckerFactors has two)."""
        return (self.rank,)


@dataclass
class TuckerFactors:
    """Tucker-2 of a (T, S, kh, kw) kernel: W = core x_0 last x_1 first^T (channel modes only)."""

    first: torch.Tensor  # (R1, S, 1, 1)
    core: torch.Tensor  # (R2, R1, kh, kw)
    last: torch.Tensor  # (T, R2, 1, 1)
    rel_error: float

    @property
    def ranks(self) -> tuple:
        return (int(self.first.shape[0]), int(self.last.shape[1]))


@dataclass
class SVDFactors:
    """Truncated SVD of an (out, in) matrix: W ~= last @ first, singular values split evenly."""

    first: torch.Tensor  # (R, in)
    last: torch.Tensor  # (out, R)
    rel_error: float

    @property
    def rank(self) -> int:
        return int(self.first.shape[0])

    @property
    def ranks(self) -> tuple:
        """``(rank,)``: every factor type has ``ranks`` (TuckerFactors has two)."""
        return (self.rank,)
