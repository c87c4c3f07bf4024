"""The Sigma-weighted least-squares problem behind the activation-aware decompositions.

A layer's kernel as a (T, D) matrix W, D = S*K (K = kh*kw, index ``s*K + k`` as in ``F.unfold``), and
the second moment Sigma (D, D) of its input patches.  The output error of an approximation W_hat is
``err^2 = tr((W - W_hat) Sigma (W - W_hat)^T)``.  Every decomposition here ends in a free (T, R) last
factor applied after an input-side map A (R, D), so given A the best last factor is a regression:
``last = W Sigma A^T (A Sigma A^T)^-1``.  For the first factors (too many unknowns for an exact solve:
R*S = 146k for a 512-channel CP at 8x) Sigma is approximated by its nearest Kronecker product
``Sigma_c (S, S) (x) Sigma_k (K, K)`` (Van Loan), under which the weighted problem is the plain one on
the whitened kernel ``W x_S L_c^T x_K L_k^T`` (L L^T the Cholesky factors).
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch

from .activation_stats import InputStats

SigmaLike = Union[InputStats, torch.Tensor, np.ndarray]
_JITTER = 1e-12  # relative diagonal jitter that keeps the small normal equations solvable


def _as_array(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"the {what} contains NaN or Inf")
    return arr


def resolve_sigma(sigma: SigmaLike, in_channels: int, kernel: Tuple[int, int], ridge: float) -> np.ndarray:
    """The (D, D) patch moment for a layer with ``in_channels`` S and ``kernel`` (kh, kw), plus
    ``ridge * mean(diag)`` on the diagonal.

    ``sigma``: :class:`InputStats` (its patch moment, else channel moment (x) I_K), or an array that is
    either the (D, D) patch moment or the (S, S) channel moment (then (x) I_K).
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    k = kernel[0] * kernel[1]
    d = in_channels * k
    if isinstance(sigma, InputStats):
        if tuple(sigma.kernel_size) != tuple(kernel) or sigma.in_channels != in_channels:
            raise ValueError(f"input statistics of a layer with {sigma.in_channels} input channels and kernel "
                             f"{tuple(sigma.kernel_size)} do not fit a layer with {in_channels} and {tuple(kernel)}")
        sigma = sigma.patch_moment if sigma.patch_moment is not None else sigma.channel_moment
    arr = _as_array(sigma, "input second moment")
    if arr.shape == (in_channels, in_channels) and k > 1:
        arr = np.kron(arr, np.eye(k))
    if arr.shape != (d, d):
        raise ValueError(f"input second moment must be ({d}, {d}) (patches) or ({in_channels}, {in_channels}) "
                         f"(channels), got {arr.shape}")
    arr = 0.5 * (arr + arr.T)
    scale = float(np.trace(arr)) / d
    if not scale > 0:
        raise ValueError("input second moment has no positive diagonal (the layer never saw a non-zero input)")
    return arr + ridge * scale * np.eye(d)


def _psd_cholesky(m: np.ndarray, floor: float) -> np.ndarray:
    """Lower Cholesky factor of the symmetric ``m`` with eigenvalues clipped below ``floor * mean``."""
    vals, vecs = np.linalg.eigh(0.5 * (m + m.T))
    vals = np.maximum(vals, floor * max(float(vals.mean()), 1e-300))
    return np.linalg.cholesky((vecs * vals) @ vecs.T)


def kronecker_whiteners(sigma: np.ndarray, s: int, k: int, floor: float = 1e-6) -> Tuple[np.ndarray, np.ndarray]:
    """Cholesky factors (L_c (S, S), L_k (K, K)) of the nearest Kronecker product Sigma_c (x) Sigma_k."""
    if k == 1:
        return _psd_cholesky(sigma, floor), np.ones((1, 1))
    # rearranged[(s, s'), (i, i')] = sigma[s*K + i, s'*K + i']: rank one iff sigma is a Kronecker product
    rearranged = sigma.reshape(s, k, s, k).transpose(0, 2, 1, 3).reshape(s * s, k * k)
    _, vecs = np.linalg.eigh(rearranged.T @ rearranged)
    spatial = vecs[:, -1].reshape(k, k)
    spatial *= np.sign(np.trace(spatial)) * k / abs(np.trace(spatial))  # mean diagonal 1
    channel = (rearranged @ spatial.reshape(-1)).reshape(s, s) / float(np.sum(spatial * spatial))
    return _psd_cholesky(channel, floor), _psd_cholesky(spatial, floor)


def whiten(w: np.ndarray, l_c: np.ndarray, l_k: np.ndarray) -> np.ndarray:
    """(T, S, K) kernel in whitened coordinates: W x_S L_c^T x_K L_k^T."""
    return np.einsum("tsk,sa,kb->tab", w, l_c, l_k, optimize=True)


def unwhiten_rows(rows: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """A factor's rows (R, n) from whitened coordinates back: rows @ L^-1."""
    return np.linalg.solve(chol.T, rows.T).T


def solve_psd(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``rhs @ matrix^-1`` for a symmetric PSD ``matrix`` (n, n), ``rhs`` (m, n), with a tiny jitter."""
    n = matrix.shape[0]
    jitter = _JITTER * max(float(np.trace(matrix)) / n, 1e-300)
    return np.linalg.solve(matrix + jitter * np.eye(n), rhs.T).T


class WeightedKernel:
    """W (T, S, K) with Sigma (D, D): the Gram matrices of the weighted problem through a first factor."""

    def __init__(self, w: np.ndarray, sigma: np.ndarray):
        self.t, self.s, self.k = w.shape
        self.w = w
        self.sigma = sigma
        self.w_sigma = w.reshape(self.t, -1) @ sigma  # (T, D)
        self.norm_sq = float(np.sum(self.w_sigma * w.reshape(self.t, -1)))  # tr(W Sigma W^T)

    def through_first(self, first: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """With B = first (x) I_K (R*K, D): ``G = B Sigma B^T`` as (R, K, R, K) and ``C = W Sigma B^T``
        as (T, R, K), for a first factor (R, S)."""
        r, s, k = first.shape[0], self.s, self.k
        left = (first @ self.sigma.reshape(s, k * s * k)).reshape(r, k, s, k)  # (R, K, S, K)
        gram = (left.transpose(0, 1, 3, 2) @ first.T).transpose(0, 1, 3, 2)  # (R, K, R, K)
        cross = (self.w_sigma.reshape(self.t, s, k).transpose(0, 2, 1) @ first.T).transpose(0, 2, 1)  # (T, R, K)
        return gram, cross

    def error_sq(self, w_hat: np.ndarray) -> float:
        """tr((W - W_hat) Sigma (W - W_hat)^T) of a (T, S, K) approximation."""
        diff = (self.w - w_hat).reshape(self.t, -1)
        return float(np.sum((diff @ self.sigma) * diff))

    def rel_error(self, w_hat: np.ndarray) -> float:
        return float(np.sqrt(max(self.error_sq(w_hat), 0.0) / self.norm_sq)) if self.norm_sq > 0 else 0.0


def reduced_rank_output(cross: np.ndarray, gram: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """Best ``W_hat = U M`` (U (T, rank) orthonormal, M (rank, P)) on top of a fixed input map B (P, D):
    reduced-rank regression from ``cross = W Sigma B^T`` (T, P) and ``gram = B Sigma B^T`` (P, P).
    Returns (U, M)."""
    unconstrained = solve_psd(gram, cross)  # (T, P): W Sigma B^T (B Sigma B^T)^-1
    _, vecs = np.linalg.eigh(unconstrained @ cross.T)  # (T, T): M* G M*^T, its top eigenvectors span U
    u = vecs[:, ::-1][:, :rank]
    return u, u.T @ unconstrained
