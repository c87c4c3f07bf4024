"""Result types of the decompositions: the factors already shaped as conv / linear weights.

All tensors are float64 on the CPU; a layer casts them to its own dtype and device. Each type checks
on construction that its tensors have the shapes of its ``SHAPES`` pattern (shared letters are equal
sizes), so factors read back from a damaged or foreign cache file are refused, not built into a layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import ClassVar, Dict

import torch


class _ShapeChecked:
    SHAPES: ClassVar[Dict[str, str]]  # field -> its dims, e.g. "R S 1 1"

    def __post_init__(self) -> None:
        kind = type(self).__name__
        sizes: Dict[str, int] = {}
        for name, pattern in self.SHAPES.items():
            tensor = getattr(self, name)
            dims = pattern.split()
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() != len(dims):
                raise ValueError(f"{kind}.{name} must be a floating-point tensor of shape ({pattern}), got "
                                 f"{getattr(tensor, 'shape', type(tensor).__name__)}")
            for dim, size in zip(dims, tensor.shape):
                expected = 1 if dim == "1" else sizes.setdefault(dim, size)
                if size != expected:
                    raise ValueError(f"{kind}.{name} has shape {tuple(tensor.shape)}, which does not fit "
                                     f"({pattern}) with {dim}={expected}")
        if not isinstance(self.rel_error, Real):
            raise ValueError(f"{kind}.rel_error must be a number, got {type(self.rel_error).__name__}")


@dataclass
class CPFactors(_ShapeChecked):
    """CP3 of a (T, S, kh, kw) kernel: W[t,s,i,j] = sum_r last[t,r] * depthwise[r,i,j] * first[r,s]."""

    SHAPES: ClassVar[Dict[str, str]] = {"first": "R S 1 1", "depthwise": "R 1 kh kw", "last": "T R 1 1"}

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
class CP4Factors(_ShapeChecked):
    """CP4 of a (T, S, kh, kw) kernel: W[t,s,i,j] = sum_r last[t,r] vertical[r,i] horizontal[r,j] first[r,s]."""

    SHAPES: ClassVar[Dict[str, str]] = {"first": "R S 1 1", "vertical": "R 1 kh 1", "horizontal": "R 1 1 kw",
                                        "last": "T R 1 1"}

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
class TuckerFactors(_ShapeChecked):
    """Tucker-2 of a (T, S, kh, kw) kernel: W = core x_0 last x_1 first^T (channel modes only)."""

    SHAPES: ClassVar[Dict[str, str]] = {"first": "R1 S 1 1", "core": "R2 R1 kh kw", "last": "T R2 1 1"}

    first: torch.Tensor  # (R1, S, 1, 1)
    core: torch.Tensor  # (R2, R1, kh, kw)
    last: torch.Tensor  # (T, R2, 1, 1)
    rel_error: float

    @property
    def ranks(self) -> tuple:
        return (int(self.first.shape[0]), int(self.last.shape[1]))


@dataclass
class SVDFactors(_ShapeChecked):
    """Truncated SVD of an (out, in) matrix: W ~= last @ first, singular values split evenly."""

    SHAPES: ClassVar[Dict[str, str]] = {"first": "R in", "last": "out R"}

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
