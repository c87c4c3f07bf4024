"""Which ranks are valid for each decomposition, and the clear errors for the others.

CP ranks are capped where the decomposed layer would stop saving parameters: a CP layer's weights grow
by ``per_rank`` (:mod:`.costs`) with each rank, against T * S * kh * kw for the dense kernel, so
``max_cp_rank = max(1, dense // per_rank)`` (never below 1, so every conv has a valid rank).  Tucker-2 ranks are capped by the channel counts (r1 <= S, r2 <= T) and SVD ranks by
min(out, in).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .costs import cp3_params, cp4_params

ShapeLike = Union[nn.Conv2d, torch.Tensor, np.ndarray, Sequence[int]]
_CP_PARAMS = {"cp3": cp3_params, "cp4": cp4_params}
CP_KINDS = tuple(_CP_PARAMS)


def kernel_shape(conv_or_shape: ShapeLike) -> Tuple[int, int, int, int]:
    """(T, S, kh, kw) of a conv, a 4-D weight, or a shape."""
    if isinstance(conv_or_shape, nn.Conv2d):
        shape = tuple(conv_or_shape.weight.shape)
    elif isinstance(conv_or_shape, (torch.Tensor, np.ndarray)):
        shape = tuple(conv_or_shape.shape)
    else:
        shape = tuple(int(v) for v in conv_or_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"expected a conv kernel shape (T, S, kh, kw) of positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def max_cp_rank(conv_or_shape: ShapeLike, kind: str = "cp3") -> int:
    """Largest CP rank whose layer has no more parameters than the dense conv (at least 1)."""
    if kind not in CP_KINDS:
        raise ValueError(f"kind must be one of {CP_KINDS}, got {kind!r}")
    t, s, kh, kw = shape = kernel_shape(conv_or_shape)
    return max(1, (t * s * kh * kw) // _CP_PARAMS[kind](shape, (1,)))


def max_tucker_ranks(conv_or_shape: ShapeLike) -> Tuple[int, int]:
    """Largest Tucker-2 ranks (r1, r2) = (in_channels S, out_channels T)."""
    t, s, _, _ = kernel_shape(conv_or_shape)
    return (s, t)


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_cp_rank(rank, conv_or_shape: ShapeLike, kind: str = "cp3") -> int:
    """Return ``rank`` as an int, or raise a ValueError/TypeError that says what is allowed."""
    rank = _check_int(rank, "CP rank")
    limit = max_cp_rank(conv_or_shape, kind)
    if rank > limit:
        raise ValueError(
            f"CP rank {rank} is too large for a kernel of shape {kernel_shape(conv_or_shape)}: "
            f"allowed 1..{limit} ({kind} layer must not have more parameters than the dense conv)"
        )
    return rank


def check_tucker_ranks(ranks, conv_or_shape: ShapeLike) -> Tuple[int, int]:
    """Return ``ranks`` as (r1, r2), or raise: r1 in 1..S (input side), r2 in 1..T (output side)."""
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        ranks = (ranks, ranks)
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise ValueError(f"Tucker ranks must be a pair (r1, r2) or an int, got {ranks!r}")
    r1, r2 = _check_int(ranks[0], "Tucker rank r1"), _check_int(ranks[1], "Tucker rank r2")
    s_max, t_max = max_tucker_ranks(conv_or_shape)
    if r1 > s_max or r2 > t_max:
        raise ValueError(
            f"Tucker ranks ({r1}, {r2}) are too large: r1 must be <= in_channels={s_max} and "
            f"r2 <= out_channels={t_max}"
        )
    return (r1, r2)


def check_svd_rank(rank, out_features: int, in_features: int) -> int:
    """Return ``rank`` as an int in 1..min(out, in), or raise."""
    rank = _check_int(rank, "SVD rank")
    if rank > min(out_features, in_features):
        raise ValueError(
            f"SVD rank {rank} is too large for a ({out_features}, {in_features}) matrix: "
            f"allowed 1..{min(out_features, in_features)}"
        )
    return rank
