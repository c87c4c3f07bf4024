"""Truncated SVD of a Linear weight (out, in) or a 1x1 conv weight (out, in, 1, 1)."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch import nn

from ._weights import to_tensor
from .factors import SVDFactors
from .ranks import check_svd_rank


def svd_decompose(matrix: Union[torch.Tensor, np.ndarray, nn.Linear], rank: int) -> SVDFactors:
    """Best rank-``rank`` approximation ``last @ first``, each side carrying sqrt of the singular values."""
    if isinstance(matrix, (nn.Linear, nn.Conv2d)):
        matrix = matrix.weight
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().to("cpu", torch.float64).numpy()
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 4 and m.shape[2:] == (1, 1):
        m = m[:, :, 0, 0]
    if m.ndim != 2:
        raise ValueError(f"expected an (out, in) matrix or a 1x1 conv weight (out, in, 1, 1), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the weight contains NaN or Inf")
    rank = check_svd_rank(rank, *m.shape)
    u, sv, vt = np.linalg.svd(m, full_matrices=False)
    root = np.sqrt(sv[:rank])
    norm = float(np.linalg.norm(sv))
    tail = float(np.linalg.norm(sv[rank:]))
    return SVDFactors(
        first=to_tensor(root[:, None] * vt[:rank]),  # (R, in)
        last=to_tensor(u[:, :rank] * root),  # (out, R)
        rel_error=tail / norm if norm > 0 else 0.0,
    )
