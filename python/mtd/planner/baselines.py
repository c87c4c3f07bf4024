"""Baseline rank selection: EVBMF (Nakajima et al., JMLR 2013) and uniform compression ratios.

EVBMF estimates the rank of a noisy matrix ``Y = U V^T + E`` in closed form: the singular values above
a threshold that depends on the (estimated) noise variance are kept. Kim et al. (ICLR 2016) apply it to
the mode-0 (output channels) and mode-1 (input channels) unfoldings of a conv kernel to get Tucker-2
ranks; MUSCO and Astrid et al. use the same estimates for CP ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .. import methods
from ..methods import rank_for_ratio

# Constant from Nakajima et al. (2013), Theorem 13: tau_bar = 2.5129 * sqrt(alpha).
_TAU_BAR_COEF = 2.5129


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """Shrinkage function tau(x; alpha) from the EVBMF analytic solution."""
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _neg_log_evidence(sigma2: float, L: int, M: int, s: np.ndarray, residual: float, x_bar: float) -> float:
    """EVBMF free energy (up to constants) as a function of the noise variance ``sigma2``."""
    H = len(s)
    alpha = L / M
    x = s ** 2 / (M * sigma2)
    z1 = x[x > x_bar]  # components that survive
    z2 = x[x <= x_bar]  # components explained by noise
    tau_z1 = _tau(z1, alpha)
    value = np.sum(z2 - np.log(z2))
    value += np.sum(z1 - tau_z1) + np.sum(np.log((tau_z1 + 1) / z1))
    value += alpha * np.sum(np.log(tau_z1 / alpha + 1))
    value += residual / (M * sigma2) + (L - H) * math.log(sigma2)
    return float(value)


def _minimize_bounded(f, lo: float, hi: float) -> float:
    """Minimise a 1-D function on [lo, hi]: log-spaced grid, then golden-section refinement."""
    if hi <= lo:
        return lo
    grid = np.geomspace(lo, hi, 64)
    values = [f(g) for g in grid]
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def evbmf_rank(matrix: np.ndarray | torch.Tensor, sigma2: float | None = None) -> int:
    """Rank of ``matrix`` estimated by empirical variational Bayesian matrix factorisation.

    Args:
        matrix: 2-D array (any orientation).
        sigma2: noise variance if known; estimated from the singular values otherwise.
    Returns:
        The number of singular values above the EVBMF threshold (0 .. min(matrix.shape)).
    """
    Y = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    if Y.ndim != 2 or min(Y.shape) == 0:
        raise ValueError(f"evbmf_rank needs a non-empty 2-D matrix, got shape {Y.shape}")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T  # the analysis assumes L <= M
    L, M = Y.shape
    s = np.linalg.svd(Y, compute_uv=False)
    H = L
    alpha = L / M
    tau_bar = _TAU_BAR_COEF * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = 0.0  # full SVD: nothing is truncated
    if sigma2 is None:
        # Bounds on sigma2 (Nakajima et al. 2013, Sec. 6): at most eH_ub components can be signal.
        eH_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
        upper = (np.sum(s ** 2) + residual) / (L * M)
        tail = s[eH_ub + 1:] if eH_ub + 1 < H else s[-1:]
        lower = max(s[min(eH_ub + 1, H - 1)] ** 2 / (M * x_bar), float(np.mean(tail ** 2)) / M)
        lower = max(lower, upper * 1e-12, 1e-300)
        sigma2 = _minimize_bounded(lambda v: _neg_log_evidence(v, L, M, s, residual, x_bar), lower, upper)
    threshold = math.sqrt(M * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return int(np.sum(s > threshold))


def vbmf_tucker_ranks(weight: torch.Tensor) -> tuple[int, int]:
    """Tucker-2 ranks ``(R1, R2)`` = EVBMF ranks of the input-channel and output-channel unfoldings.

    ``weight`` is a conv kernel (T, S, kh, kw); R1 acts on the S input channels, R2 on the T outputs.
    Each rank is at least 1.
    """
    T, S = weight.shape[:2]
    w = weight.detach().double()
    r_out = evbmf_rank(w.reshape(T, -1))  # mode-0 unfolding (T, S*kh*kw)
    r_in = evbmf_rank(w.transpose(0, 1).reshape(S, -1))  # mode-1 unfolding (S, T*kh*kw)
    return max(1, min(r_in, S)), max(1, min(r_out, T))


def vbmf_cp_rank(weight: torch.Tensor) -> int:
    """CP rank from EVBMF: the larger of the two unfolding ranks (as in MUSCO's CP rank estimate)."""
    r_in, r_out = vbmf_tucker_ranks(weight)
    return max(r_in, r_out)


def uniform_cp_rank(out_ch: int, in_ch: int, kh: int, kw: int, ratio: float, cp4: bool = False) -> int:
    """Largest CP rank whose factor parameter count is at most ``dense / ratio`` (at least 1)."""
    _check_ratio(ratio)
    return rank_for_ratio(methods.get("cp4" if cp4 else "cp").params, (out_ch, in_ch, kh, kw), ratio)


def uniform_tucker_ranks(out_ch: int, in_ch: int, kh: int, kw: int, ratio: float) -> tuple[int, int]:
    """Tucker-2 ranks ``(R1, R2) = (a*S, a*T)`` with ``S*R1 + R1*R2*kh*kw + R2*T <= dense / ratio``."""
    _check_ratio(ratio)
    S, T, k2 = in_ch, out_ch, kh * kw
    budget = out_ch * in_ch * k2 / ratio
    # a^2 * S*T*k2 + a * (S^2 + T^2) - budget = 0
    qa, qb = S * T * k2, S * S + T * T
    a = (-qb + math.sqrt(qb * qb + 4 * qa * budget)) / (2 * qa)
    return max(1, min(S, int(a * S))), max(1, min(T, int(a * T)))


def uniform_svd_rank(out_features: int, in_features: int, ratio: float) -> int:
    """Largest SVD rank with ``rank * (in + out) <= in * out / ratio`` (at least 1)."""
    _check_ratio(ratio)
    return rank_for_ratio(methods.get("svd").params, (out_features, in_features), ratio)


def _check_ratio(ratio: float) -> None:
    if not ratio or ratio <= 1:
        raise ValueError(f"target_ratio must be > 1 (a compression factor such as 4), got {ratio!r}")


@dataclass(frozen=True)
class RankRule:
    """A baseline planner mode: every conv decomposed by ``method`` at the ranks of a closed-form rule."""

    method: str  # a name in mtd.methods
    ranks: Callable[[torch.Tensor, Optional[float]], tuple[int, ...]]  # (conv weight, target ratio) -> ranks
    needs_ratio: bool  # the rule is a compression ratio (uniform), not an estimate from the weight (EVBMF)


RANK_RULES = {
    "cp-vbmf": RankRule("cp", lambda w, ratio: (vbmf_cp_rank(w),), needs_ratio=False),
    "tucker-vbmf": RankRule("tucker", lambda w, ratio: vbmf_tucker_ranks(w), needs_ratio=False),
    "cp-uniform": RankRule("cp", lambda w, ratio: (uniform_cp_rank(*w.shape, ratio),), needs_ratio=True),
    "tucker-uniform": RankRule("tucker", lambda w, ratio: uniform_tucker_ranks(*w.shape, ratio), needs_ratio=True),
}
