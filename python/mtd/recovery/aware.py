"""Activation-aware decompositions: minimise the error of the layer's *output* on calibration data,
``||(W - W_hat) Sigma^1/2||_F`` (Sigma: the input patch second moment of :mod:`.activation_stats`,
channel moment (x) I as the fallback), instead of the weight error ``||W - W_hat||_F``.

They return the same factor dataclasses as the weight-only decompositions (``rel_error`` is still the
*weight* error, as documented there), so they drop into ``CPConv2d.from_conv(..., factors=...)`` etc.
:func:`output_error` measures what they optimise.

* :func:`aware_svd` (Linear, and CP of a 1x1 conv): exact optimum (SVD-LLM's whitened SVD), computed
  as reduced-rank regression: ``W_hat = U U^T W`` with U the top eigenvectors of ``W Sigma W^T``.
* :func:`aware_tucker2`: alternating, each step exact or whitened (see its docstring).
* :func:`aware_cp` / :func:`aware_cp4`: a CP start (by default the weight-only CP), then exact block
  re-solves of the spatial and last factors given the first one (see their docstrings).

Measured on full-width VGG11 (benchmarks/results/bench_aware.md: 8 convs x CP3 8x/32x and Tucker-2
0.25/0.0625, one layer swapped at a time, 1024 calibration images): the held-out output error of the
aware twin is 0.36-0.92x (median 0.63x) of the weight-only CP's and 0.37-0.99x (median 0.57x) of
Tucker-2's; test accuracy (2000 images, dense 82.15%) up by up to 15.0 points (CP, features.8 32x:
64.25 -> 79.25%) and 22.2 points (Tucker-2, features.8 0.0625: 52.05 -> 74.25%); higher in 8/16
(CP) and 12/16 (Tucker-2) rows, at most 0.25 points lower elsewhere (rows where the weight-only layer
already costs < 1 point) except on the 3-input-channel first conv at CP rank 1-2, which ruins both
(18.2 -> 15.75%, 16.65 -> 13.3%).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..decompose import (CP4Factors, CPFactors, SVDFactors, TuckerFactors, check_cp_rank, check_svd_rank,
                         check_tucker_ranks, cp4_decompose_conv, cp_decompose_conv, tucker2_decompose_conv)
from ..decompose._weights import WeightLike, conv_kernel, rel_error, to_tensor
from ._weighted import (SigmaLike, WeightedKernel, kronecker_whiteners, reduced_rank_output, resolve_sigma,
                        solve_psd, unwhiten_rows, whiten)

# Sigma + ridge * mean(diag Sigma) * I.  Measured on VGG11 (features.4/.11/.22, CP 8x/32x, Tucker-2
# 0.25/0.0625, 1024 calibration images, error on 1000 others): 1e-3 and 1e-1 end within 0.001 of each
# other in relative output error (1e-1 helps the 512-channel layers, whose 4608-wide patch moment has
# only 4096 samples, by <= 0.0013; 1e-3 the shallow ones by <= 0.003).
DEFAULT_RIDGE = 1e-3
STARTS = ("weights", "whitened")
StartLike = Union[str, CPFactors, CP4Factors, TuckerFactors]


def _weight_array(weight: Union[torch.Tensor, np.ndarray, nn.Module]) -> np.ndarray:
    """A float64 (out, in) or (T, S, kh, kw) array from a weight (or an nn.Linear / nn.Conv2d)."""
    if isinstance(weight, (nn.Linear, nn.Conv2d)):
        weight = weight.weight
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(weight, dtype=np.float64)
    if arr.ndim not in (2, 4):
        raise ValueError(f"expected an (out, in) matrix or a (T, S, kh, kw) conv weight, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the weight contains NaN or Inf")
    return arr


def _matrix(weight: Union[torch.Tensor, np.ndarray, nn.Module]) -> np.ndarray:
    """(out, in) float64 from a Linear / 1x1 conv weight (or module)."""
    m = _weight_array(weight)
    if m.ndim == 4 and m.shape[2:] == (1, 1):
        m = m[:, :, 0, 0]
    if m.ndim != 2:
        raise ValueError(f"expected an (out, in) matrix or a 1x1 conv weight (out, in, 1, 1), got shape {m.shape}")
    return m


def _check_start(start, factor_type: type, rank) -> None:
    """``start`` is one of STARTS or weight-only factors of ``factor_type`` at ``rank`` (reused, not recomputed)."""
    if isinstance(start, factor_type):
        got = start.ranks if factor_type is TuckerFactors else start.rank
        if tuple(np.atleast_1d(got)) != tuple(np.atleast_1d(rank)):
            raise ValueError(f"start factors have rank {got}, expected {rank}")
    elif isinstance(start, str):
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS} or {factor_type.__name__}, got {start!r}")
    else:
        raise TypeError(f"start must be one of {STARTS} or {factor_type.__name__}, got {type(start).__name__}")


def output_error(weight: WeightLike, approx: WeightLike, sigma: SigmaLike) -> float:
    """Relative output error ``sqrt(tr(D Sigma D^T) / tr(W Sigma W^T))``, D = W - approx, of two
    (T, S, kh, kw) kernels or (out, in) matrices: ``||(W - W_hat) X|| / ||W X||`` on the data whose
    second moment is ``sigma`` (a layer bias cancels in the difference and is left out of ``||W X||``)."""
    w, a = _weight_array(weight), _weight_array(approx)
    if w.shape != a.shape:
        raise ValueError(f"weight {w.shape} and approximation {a.shape} differ in shape")
    kernel = w.shape[2:] if w.ndim == 4 else (1, 1)
    problem = WeightedKernel(w.reshape(w.shape[0], w.shape[1], -1), resolve_sigma(sigma, w.shape[1], kernel, 0.0))
    return problem.rel_error(a.reshape(problem.w.shape))


def _rrr_svd(m: np.ndarray, sigma: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rank-``rank`` ``last @ first`` minimising ||(M - last first) Sigma^1/2||, singular values split evenly."""
    u, core = reduced_rank_output(m @ sigma, sigma, rank)  # W_hat = U (U^T M)
    p, sv, qt = np.linalg.svd(core, full_matrices=False)  # balance: U^T M = P diag(sv) Q^T
    root = np.sqrt(sv)
    return root[:, None] * qt, (u @ p) * root  # first (R, in), last (out, R)


def aware_svd(matrix: Union[torch.Tensor, np.ndarray, nn.Module], sigma: SigmaLike, rank: int, *,
              ridge: float = DEFAULT_RIDGE) -> SVDFactors:
    """Rank-``rank`` factorisation of an (out, in) matrix (or 1x1 conv weight (out, in, 1, 1)) minimising
    ``||(W - last @ first) Sigma^1/2||`` with ``sigma`` (in, in) (or :class:`InputStats`): the exact
    optimum, ``W_hat = U U^T W`` with U (out, R) the top eigenvectors of ``W Sigma W^T`` (the same
    solution as SVD-LLM's SVD of ``W L``, L = chol(Sigma), without inverting L).  With Sigma = I it is
    :func:`mtd.decompose.svd_decompose`.

    Measured on VGG11's 10x512 classifier (benchmarks/results/bench_aware.md): lower output error on the
    1024 calibration images (0.640 -> 0.630 at rank 4, 0.818 -> 0.803 at rank 2) but not on 1000 others
    (0.643 -> 0.645, 0.814 -> 0.816: 1024 samples of a 512-wide input); test accuracy with it swapped
    52.65 -> 59.20% and 32.05 -> 32.25%.
    """
    m = _matrix(matrix)
    rank = check_svd_rank(rank, *m.shape)
    first, last = _rrr_svd(m, resolve_sigma(sigma, m.shape[1], (1, 1), ridge), rank)
    return SVDFactors(first=to_tensor(first), last=to_tensor(last), rel_error=rel_error(m, last @ first))


def _balanced(factors: Sequence[np.ndarray]) -> list:
    """Rescale component r of every (R, ...) factor to the geometric mean of their norms."""
    norms = [np.linalg.norm(f.reshape(f.shape[0], -1), axis=1) for f in factors]
    target = np.prod(norms, axis=0) ** (1.0 / len(factors))
    return [f * (target / np.where(n > 0, n, 1.0)).reshape(-1, *([1] * (f.ndim - 1)))
            for f, n in zip(factors, norms)]


class _SpatialLastRefit:
    """Exact alternating re-solves of the spatial factor (R, K) and the last factor (T, R) of a CP with
    a fixed first factor (R, S), in the full Sigma norm (each step lowers the output error)."""

    def __init__(self, problem: WeightedKernel, first: np.ndarray):
        self.problem = problem
        self.gram, self.cross = problem.through_first(first)  # (R, K, R, K), (T, R, K)

    def last_for(self, spatial: np.ndarray) -> Tuple[np.ndarray, float]:
        """Best last factor given the spatial one, and the squared output error it leaves."""
        a_sigma_a = np.einsum("rk,rkql,ql->rq", spatial, self.gram, spatial, optimize=True)  # (R, R)
        w_sigma_a = np.einsum("trk,rk->tr", self.cross, spatial, optimize=True)  # (T, R)
        last = solve_psd(a_sigma_a, w_sigma_a)
        return last, self.problem.norm_sq - float(np.sum(last * w_sigma_a))

    def spatial_for(self, last: np.ndarray, maps: Optional[np.ndarray] = None) -> np.ndarray:
        """Best spatial factor ``spatial[r] = maps[r] @ theta[r]`` given ``last``; ``maps`` (R, K, P)
        (None: the identity, CP3; one separable direction fixed for CP4).  Returns theta (R, P)."""
        hessian = (last.T @ last)[:, None, :, None] * self.gram  # (R, K, R, K)
        rhs = np.einsum("tr,trk->rk", last, self.cross, optimize=True)  # (R, K)
        if maps is not None:
            hessian = np.einsum("rkql,rka,qlb->raqb", hessian, maps, maps, optimize=True)
            rhs = np.einsum("rk,rka->ra", rhs, maps)
        r, p = rhs.shape
        return solve_psd(hessian.reshape(r * p, r * p), rhs.reshape(1, -1)).reshape(r, p)


def _cp_start(w4: np.ndarray, sigma: np.ndarray, rank: int, start: StartLike, cp4: bool, cp_kwargs: dict):
    """Weight-only CP factors of W (``start='weights'``) or of the whitened W mapped back ('whitened';
    CP4 whitens the channel mode only: a K x K whitener would break the kh x kw separability)."""
    decompose = cp4_decompose_conv if cp4 else cp_decompose_conv
    t, s, kh, kw = w4.shape
    if isinstance(start, (CPFactors, CP4Factors)):
        return start
    if start == "weights":
        return decompose(w4, rank, **cp_kwargs)
    l_c, l_k = kronecker_whiteners(sigma, s, kh * kw)
    if cp4:
        l_k = np.eye(kh * kw)
    factors = decompose(whiten(w4.reshape(t, s, -1), l_c, l_k).reshape(w4.shape), rank, **cp_kwargs)
    first = unwhiten_rows(factors.first.numpy().reshape(rank, s), l_c)
    factors.first = to_tensor(first.reshape(rank, s, 1, 1))
    if not cp4:
        factors.depthwise = to_tensor(unwhiten_rows(factors.depthwise.numpy().reshape(rank, -1), l_k)
                                      .reshape(rank, 1, kh, kw))
    return factors


def _one_by_one_cp(w4: np.ndarray, sigma: np.ndarray, rank: int) -> CPFactors:
    t, s = w4.shape[:2]
    first, last = _rrr_svd(w4[:, :, 0, 0], sigma, rank)
    w_hat = (last @ first).reshape(w4.shape)
    return CPFactors(first=to_tensor(first.reshape(rank, s, 1, 1)), depthwise=to_tensor(np.ones((rank, 1, 1, 1))),
                     last=to_tensor(last.reshape(t, rank, 1, 1)), rel_error=rel_error(w4, w_hat))


def aware_cp(weight: WeightLike, sigma: SigmaLike, rank: int, *, start: StartLike = "weights", refit_sweeps: int = 10,
             tol: float = 1e-4, ridge: float = DEFAULT_RIDGE, **cp_kwargs) -> CPFactors:
    """Activation-aware CP3 of a (T, S, kh, kw) kernel at ``rank``: first (R, S, 1, 1), depthwise
    (R, 1, kh, kw), last (T, R, 1, 1) minimising the output error in the ``sigma`` norm.

    1. Start: CP-ALS (``cp_kwargs`` go to :func:`cp_decompose_conv`) of the kernel whitened by the
       nearest Kronecker factors of Sigma (``start='whitened'``; exact for Sigma = Sigma_c (x) Sigma_k),
       or of the plain kernel (``'weights'``).
    2. Given the first factor, up to ``refit_sweeps`` alternating exact re-solves of the last factor,
       ``L = W Sigma A^T (A Sigma A^T)^-1`` (A (R, S*K) the patch -> rank map), and of the depthwise
       factor (an (R*K)-unknown least-squares problem), in the full patch Sigma; stops when a sweep
       lowers the squared error by less than ``tol`` times itself.  Never worse than its start.

    A 1x1 kernel gets the exact optimum (:func:`aware_svd`).  With Sigma = I this is the weight-only
    CP followed by ALS steps on two of its factors (equal error to ALS tolerance).

    Start, measured on VGG11 (held-out relative output error, 30 ALS sweeps; weight-only / aware from
    the weight-only factors / aware from the whitened kernel): features.4 8x 0.147 / 0.096 / 0.122,
    32x 0.551 / 0.413 / 0.396; features.11 8x 0.209 / 0.136 / 0.157, 32x 0.422 / 0.309 / 0.329;
    features.22 8x 0.248 / 0.104 / 0.112, 32x 0.301 / 0.150 / 0.164; features.0 (S = 3) 8x 0.918 /
    0.819 / 0.739.  So the default is ``start='weights'`` (better in 4 of 6 on the wide layers, and it
    reuses the planner's weight-only factors: pass them as ``start``, no second ALS).  All layers and
    the accuracy with the layer swapped: benchmarks/results/bench_aware.md.
    """
    w4 = conv_kernel(weight)
    t, s, kh, kw = w4.shape
    rank = check_cp_rank(rank, w4.shape, "cp3")
    _check_start(start, CPFactors, rank)
    sigma = resolve_sigma(sigma, s, (kh, kw), ridge)
    if kh * kw == 1:
        return _one_by_one_cp(w4, sigma, rank)
    start_factors = _cp_start(w4, sigma, rank, start, False, cp_kwargs)
    first = start_factors.first.numpy().reshape(rank, s)
    spatial = start_factors.depthwise.numpy().reshape(rank, -1)
    refit = _SpatialLastRefit(WeightedKernel(w4.reshape(t, s, -1), sigma), first)
    last, err = refit.last_for(spatial)
    for _ in range(refit_sweeps):
        spatial = refit.spatial_for(last)
        last, new_err = refit.last_for(spatial)
        done = err - new_err <= tol * max(err, 0.0)
        err = new_err
        if done:
            break
    first, spatial, last_r = _balanced([first, spatial, last.T])
    w_hat = np.einsum("rt,rk,rs->tsk", last_r, spatial, first).reshape(w4.shape)
    return CPFactors(first=to_tensor(first.reshape(rank, s, 1, 1)),
                     depthwise=to_tensor(spatial.reshape(rank, 1, kh, kw)),
                     last=to_tensor(last_r.T.reshape(t, rank, 1, 1)), rel_error=rel_error(w4, w_hat),
                     n_iter=start_factors.n_iter)


def aware_cp4(weight: WeightLike, sigma: SigmaLike, rank: int, *, start: StartLike = "weights", refit_sweeps: int = 10,
              tol: float = 1e-4, ridge: float = DEFAULT_RIDGE, **cp_kwargs) -> CP4Factors:
    """Activation-aware CP4 of a (T, S, kh, kw) kernel: as :func:`aware_cp`, with the spatial factor
    kept separable (vertical (R, kh) x horizontal (R, kw)): each sweep re-solves vertical given
    horizontal, horizontal given vertical, then last, all exactly in the full Sigma norm.  The
    whitened start whitens the channel mode only.  Measured on a planted problem only (tests: 0.897x
    the weight-only output error); not in bench_aware (the planner's coarse grid has no CP4).
    """
    w4 = conv_kernel(weight)
    t, s, kh, kw = w4.shape
    rank = check_cp_rank(rank, w4.shape, "cp4")
    _check_start(start, CP4Factors, rank)
    sigma = resolve_sigma(sigma, s, (kh, kw), ridge)
    start_factors = _cp_start(w4, sigma, rank, start, True, cp_kwargs)
    first = start_factors.first.numpy().reshape(rank, s)
    vert = start_factors.vertical.numpy().reshape(rank, kh)
    horiz = start_factors.horizontal.numpy().reshape(rank, kw)
    refit = _SpatialLastRefit(WeightedKernel(w4.reshape(t, s, -1), sigma), first)

    def spatial(v, h):
        return (v[:, :, None] * h[:, None, :]).reshape(rank, -1)  # (R, kh*kw)

    last, err = refit.last_for(spatial(vert, horiz))
    eye_h, eye_w = np.eye(kh), np.eye(kw)
    for _ in range(refit_sweeps):
        # spatial[r, i*kw + j] = vert[r, i] * horiz[r, j]: linear in either factor given the other
        vert = refit.spatial_for(last, np.einsum("ia,rj->rija", eye_h, horiz).reshape(rank, kh * kw, kh))
        horiz = refit.spatial_for(last, np.einsum("ri,jb->rijb", vert, eye_w).reshape(rank, kh * kw, kw))
        last, new_err = refit.last_for(spatial(vert, horiz))
        done = err - new_err <= tol * max(err, 0.0)
        err = new_err
        if done:
            break
    first, vert, horiz, last_r = _balanced([first, vert, horiz, last.T])
    w_hat = np.einsum("rt,ri,rj,rs->tsij", last_r, vert, horiz, first)
    return CP4Factors(first=to_tensor(first.reshape(rank, s, 1, 1)), vertical=to_tensor(vert.reshape(rank, 1, kh, 1)),
                      horizontal=to_tensor(horiz.reshape(rank, 1, 1, kw)),
                      last=to_tensor(last_r.T.reshape(t, rank, 1, 1)), rel_error=rel_error(w4, w_hat),
                      n_iter=start_factors.n_iter)


def _tucker_output_side(problem: WeightedKernel, first: np.ndarray, r2: int):
    """Exact best (last (T, r2), core (r2, r1, K)) for a fixed first factor (r1, S), and its error^2."""
    gram, cross = problem.through_first(first)
    p = first.shape[0] * problem.k
    u, core = reduced_rank_output(cross.reshape(problem.t, p), gram.reshape(p, p), r2)
    core = core.reshape(r2, first.shape[0], problem.k)
    w_hat = np.einsum("tb,bak,as->tsk", u, core, first, optimize=True)
    return u, core, problem.error_sq(w_hat)


def aware_tucker2(weight: WeightLike, sigma: SigmaLike, ranks, *, start: StartLike = "weights", sweeps: int = 3,
                  ridge: float = DEFAULT_RIDGE, **tucker_kwargs) -> TuckerFactors:
    """Activation-aware Tucker-2 of a (T, S, kh, kw) kernel at ``ranks=(r1, r2)``: first (r1, S, 1, 1)
    (rows of unit norm), core (r2, r1, kh, kw), last (T, r2, 1, 1) (orthonormal columns).

    A weighted HOOI: given the input factor, the output factor and core are the exact optimum in the
    full patch Sigma (reduced-rank regression in closed form); given the output factor, the input
    factor is the HOOI step of the kernel whitened by the nearest Kronecker factors of Sigma.  The
    input factor starts from the HOOI (``tucker_kwargs`` go to :func:`tucker2_decompose_conv`) of the
    whitened kernel (``start='whitened'``) or of the plain one (``'weights'``); ``sweeps`` alternations
    follow and the best in the full Sigma norm is kept.  With Sigma = I: HOOI (equal error to its tol).

    Measured on VGG11 (held-out relative output error, weight-only -> aware): features.4 0.25 0.220 ->
    0.117, 0.0625 0.642 -> 0.452; features.11 0.287 -> 0.166, 0.518 -> 0.403; features.22 0.269 ->
    0.105, 0.333 -> 0.185.  The two starts end within 0.002 of each other, so the default is
    ``start='weights'`` (or the weight-only factors themselves).  All layers and the accuracy with the
    layer swapped: benchmarks/results/bench_aware.md.
    """
    w4 = conv_kernel(weight)
    t, s, kh, kw = w4.shape
    r1, r2 = check_tucker_ranks(ranks, w4.shape)
    _check_start(start, TuckerFactors, (r1, r2))
    sigma = resolve_sigma(sigma, s, (kh, kw), ridge)
    problem = WeightedKernel(w4.reshape(t, s, -1), sigma)
    l_c, l_k = kronecker_whiteners(sigma, s, kh * kw)
    if isinstance(start, TuckerFactors):
        first = start.first.numpy().reshape(r1, s)
    elif start == "weights":
        first = tucker2_decompose_conv(w4, (r1, r2), **tucker_kwargs).first.numpy().reshape(r1, s)
    else:
        white = whiten(problem.w, l_c, l_k).reshape(w4.shape)
        first = unwhiten_rows(tucker2_decompose_conv(white, (r1, r2), **tucker_kwargs).first.numpy()
                              .reshape(r1, s), l_c)
    best: Optional[tuple] = None
    for sweep in range(sweeps + 1):
        if sweep:  # input factor: HOOI step on the whitened W x_T U^T, mapped back
            z = whiten(np.einsum("tb,tsk->bsk", best[1], problem.w), l_c, l_k)  # (r2, S, K)
            unfold = z.transpose(1, 0, 2).reshape(s, -1)
            first = unwhiten_rows(np.linalg.eigh(unfold @ unfold.T)[1][:, ::-1][:, :r1].T, l_c)
        first = first / np.linalg.norm(first, axis=1, keepdims=True)
        u, core, err = _tucker_output_side(problem, first, r2)
        if best is not None and err >= best[3]:
            break  # the whitened input step no longer helps in the full Sigma norm
        best = (first, u, core, err)
    first, u, core, _ = best
    w_hat = np.einsum("tb,bak,as->tsk", u, core, first, optimize=True).reshape(w4.shape)
    return TuckerFactors(first=to_tensor(first.reshape(r1, s, 1, 1)), core=to_tensor(core.reshape(r2, r1, kh, kw)),
                         last=to_tensor(u.reshape(t, r2, 1, 1)), rel_error=rel_error(w4, w_hat))
