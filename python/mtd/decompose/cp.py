"""CP3 (T, S, kh*kw) and CP4 (T, S, kh, kw) decompositions of a conv kernel."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from ._weights import WeightLike, conv_kernel, rel_error, to_tensor
from .cp_als import balanced_factors, cp_als, reconstruct
from .cp_result import ALSResult
from .engines import DEFAULT_ENGINE, check_engine
from .factors import CP4Factors, CPFactors
from .ranks import check_cp_rank

CPInit = Union[str, CPFactors, CP4Factors, Sequence[np.ndarray]]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _cp3_init(init: CPInit, shape) -> Union[str, list]:
    """Factor matrices (T,R), (S,R), (kh*kw,R) from a CPFactors warm start (others pass through)."""
    if isinstance(init, CP4Factors):
        raise TypeError("a CP3 decomposition cannot warm-start from CP4Factors; pass CPFactors")
    if isinstance(init, CPFactors):
        r = init.rank
        if tuple(init.depthwise.shape[2:]) != tuple(shape[2:]):
            raise ValueError(f"warm-start kernel size {tuple(init.depthwise.shape[2:])} != {tuple(shape[2:])}")
        return [_np(init.last).reshape(-1, r), _np(init.first).reshape(r, -1).T,
                _np(init.depthwise).reshape(r, -1).T]
    return init


def _cp4_init(init: CPInit, shape) -> Union[str, list]:
    """Factor matrices (T,R), (S,R), (kh,R), (kw,R) from a CP4Factors warm start."""
    if isinstance(init, CPFactors):
        raise TypeError("a CP4 decomposition cannot warm-start from CPFactors; pass CP4Factors")
    if isinstance(init, CP4Factors):
        r = init.rank
        return [_np(init.last).reshape(-1, r), _np(init.first).reshape(r, -1).T,
                _np(init.vertical).reshape(r, -1).T, _np(init.horizontal).reshape(r, -1).T]
    return init


def _run_cp(tensor: np.ndarray, rank: int, init, **als_kwargs) -> ALSResult:
    """CP-ALS, except for a 1x1 kernel whose CP is the truncated SVD of the (T, S) matrix (optimal, no
    ALS, the same for both engines)."""
    t, s = tensor.shape[:2]
    if all(n == 1 for n in tensor.shape[2:]) and isinstance(init, str):
        u, sv, vt = np.linalg.svd(tensor.reshape(t, s), full_matrices=False)
        kernel_modes = [np.ones((1, rank)) for _ in tensor.shape[2:]]
        return ALSResult([u[:, :rank], vt[:rank].T, *kernel_modes], sv[:rank], 0.0, 0)
    return cp_als(tensor, rank, init=init, **als_kwargs)


def cp_decompose_conv(weight: WeightLike, rank: int, *, n_iter_max: int = 100, init: CPInit = "svd",
                      tol: float = 1e-6, seed: int = 0, n_restarts: int = 3,
                      max_norm_ratio: float = 1e4, engine: str = DEFAULT_ENGINE) -> CPFactors:
    """CP3 of a conv kernel (T, S, kh, kw), seen as a (T, S, kh*kw) tensor.

    ``init``: 'svd' (default), 'random', or the factors of an earlier CP of any rank (warm start: the
    strongest components are kept).  NaN/Inf or diverging norms trigger ``n_restarts`` seeded random
    restarts; :class:`CPDecompositionError` if all fail.  Component norms are balanced over the three
    factors.  ``rel_error`` is ||W - W_hat|| / ||W||.  ``engine``: "mtd" (default, the in-house
    CP-ALS) or "tensorly" (``tensorly.decomposition.parafac`` with the same inits and checks).
    """
    engine = check_engine(engine)
    w = conv_kernel(weight)
    rank = check_cp_rank(rank, w.shape, "cp3")
    t, s, kh, kw = w.shape
    tensor = w.reshape(t, s, kh * kw)
    result = _run_cp(tensor, rank, _cp3_init(init, w.shape), n_iter_max=n_iter_max, tol=tol, seed=seed,
                    n_restarts=n_restarts, max_norm_ratio=max_norm_ratio, engine=engine)
    a, b, c = balanced_factors(result)  # (T,R), (S,R), (kh*kw,R)
    return CPFactors(
        first=to_tensor(b.T.reshape(rank, s, 1, 1)),
        depthwise=to_tensor(c.T.reshape(rank, 1, kh, kw)),
        last=to_tensor(a.reshape(t, rank, 1, 1)),
        rel_error=rel_error(tensor, reconstruct([a, b, c])),
        n_iter=result.n_iter,
    )


def cp4_decompose_conv(weight: WeightLike, rank: int, *, n_iter_max: int = 100, init: CPInit = "svd",
                       tol: float = 1e-6, seed: int = 0, n_restarts: int = 3,
                       max_norm_ratio: float = 1e4, engine: str = DEFAULT_ENGINE) -> CP4Factors:
    """CP of the 4-way kernel (T, S, kh, kw) (Lebedev et al. 2015); same options as CP3."""
    engine = check_engine(engine)
    w = conv_kernel(weight)
    rank = check_cp_rank(rank, w.shape, "cp4")
    t, s, kh, kw = w.shape
    result = _run_cp(w, rank, _cp4_init(init, w.shape), n_iter_max=n_iter_max, tol=tol, seed=seed,
                    n_restarts=n_restarts, max_norm_ratio=max_norm_ratio, engine=engine)
    a, b, v, h = balanced_factors(result)  # (T,R), (S,R), (kh,R), (kw,R)
    return CP4Factors(
        first=to_tensor(b.T.reshape(rank, s, 1, 1)),
        vertical=to_tensor(v.T.reshape(rank, 1, kh, 1)),
        horizontal=to_tensor(h.T.reshape(rank, 1, 1, kw)),
        last=to_tensor(a.reshape(t, rank, 1, 1)),
        rel_error=rel_error(w, reconstruct([a, b, v, h])),
        n_iter=result.n_iter,
    )
