"""Turning conv / linear weights into float64 numpy arrays, and measuring reconstruction error."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch import nn

WeightLike = Union[torch.Tensor, np.ndarray, nn.Conv2d]


def conv_kernel(weight: WeightLike) -> np.ndarray:
    """A (T, S, kh, kw) float64 array from a conv weight (or an ``nn.Conv2d``)."""
    if isinstance(weight, nn.Conv2d):
        if weight.groups != 1:
            raise ValueError(f"grouped convolutions (groups={weight.groups}) cannot be decomposed; only groups=1")
        weight = weight.weight
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(weight, dtype=np.float64)
    if arr.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight (T, S, kh, kw), got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("the weight contains NaN or Inf")
    return arr


def rel_error(reference: np.ndarray, approx: np.ndarray) -> float:
    """||reference - approx|| / ||reference|| (0 for an all-zero reference reproduced exactly)."""
    norm = float(np.linalg.norm(reference))
    diff = float(np.linalg.norm(reference - approx))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
