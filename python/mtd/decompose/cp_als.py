"""CP by alternating least squares (CP-ALS) on a small N-way numpy tensor, with restarts.

This is the default engine ("mtd", see ``engines.py``); ``engine="tensorly"`` runs
``tensorly.decomposition.parafac`` from the same starts through the same restart loop
(``tensorly_engine.py``).  Why in-house by default: the sweeps below contract the largest mode
with one GEMM and never materialise a Khatri-Rao product; measured with single-threaded OpenBLAS
on the 2-core dev machine (benchmarks/results/bench_decompose.md, 2 sweeps + init) a 512x512x3x3
CP3 is ~4-7x and a CP4 ~35-55x faster than tensorly 0.10, whose MTTKRP materialises the Khatri-Rao
product of all other factors for every mode, e.g. (T*S*kw, R) for the kh mode of a CP4.
A Bro-style line search gets ALS out of slow "swamps".  The sweeps also give what a planner needs
from CP: a deliberate SVD init when the rank exceeds a mode's size (no warnings), warm starts from
other factors, detection of NaN/Inf and of diverging (degenerate, cancelling) components, and
seeded restarts.

The start, measured on kernels of exact CP rank (issue 10; Gaussian factors, 8 awkward shapes x 6
seeds as in tests/test_decompose.py, default 100 sweeps / tol 1e-6): ALS from the SVD start left
1/48 CP3 and 9/48 CP4 above 1e-3 relative error (up to 4.5e-2; the issue's 16x32x3x1 rank 4: 5.7e-3).
These are local minima, not a loose stopping rule: with 3000 sweeps and tol=0 the CP4 16x16x5x1 rank 6
still kept 3/8 at 1e-2..6e-2, and other extrapolation steps of the line search (it^(1/3), it^(1/2),
from sweep 1) left 14-17/64 failures on hard cases instead of 14/64.  The GEVD start
(:func:`gevd_init`) is exact for these: 0/96 above 1e-3, all at ~1e-12 after 1-3 sweeps.  With noise
added (0.1%..30% of ||W||, 48 runs per level) it never ended worse than the SVD start and better in
10, 7, 5, 1 of 48 runs at 0.1%, 1%, 10%, 20% noise.  It is taken only when it already fits within
GEVD_START_MAX_ERROR = 0.25: from it, trained VGG11 kernels fit at >= 0.51 at every planner rank, so
they keep the SVD start and bit-identical factors.  Its check costs 0.15-0.65 s on 512x512x3x3
(ranks 71-286; ~0.6-1 sweep, the Gram eigenvectors are shared with the SVD start), <= 1% of the
100-sweep default; it is skipped where the rank exceeds two of T, S, kh*kw.  Not solved: a rank above
T, S and kh*kw (e.g. 8x8x3x3 at rank 10) has no GEVD start; there 14/64 stay above 1e-3, and the best
of 2 (4) seeded starts brings that to 6/64 (2/64) at 2.3x (4.6x) the time, not taken as a default.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorly as tl

from . import tensorly_engine
from .cp_result import ALSResult, Diverged, normalized
from .engines import DEFAULT_ENGINE, check_engine, numpy_backend

InitSpec = Union[str, Sequence[np.ndarray]]


class CPDecompositionError(RuntimeError):
    """Every CP-ALS attempt (initial one and seeded restarts) diverged or produced NaN/Inf."""


def balanced_factors(result: ALSResult) -> List[np.ndarray]:
    """Spread each component's norm evenly over the N factors (|w|^(1/N) each): stable fine-tuning."""
    scale = np.abs(result.weights) ** (1.0 / len(result.factors))
    return [f * scale for f in result.factors]


def reconstruct(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Full tensor of a CP given (weights absorbed into) its factors (tensorly's ``cp_to_tensor``:
    as fast as an einsum, ~18 ms for 512x512x9 at rank 100)."""
    with numpy_backend():
        return np.asarray(tl.cp_to_tensor((None, list(factors))))


def _unit_columns(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=0)
    return m / np.where(norms > 0, norms, 1.0)


class GramBases:
    """Eigenvectors of the Gram matrix of each unfolding of one tensor (largest eigenvalue first),
    computed once: the GEVD start and the SVD start share them.  An unfolding's rows are a group of
    modes, e.g. (2, 3) for the kernel mode kh*kw of a CP4 seen as a 3-way tensor."""

    def __init__(self, tensor: np.ndarray):
        self.tensor = tensor
        self._bases = {}

    def leading(self, modes: Tuple[int, ...], k: int) -> np.ndarray:
        """The ``k`` leading left singular vectors (prod(I_modes), k) of the unfolding along ``modes``."""
        if modes not in self._bases:
            rows = int(np.prod([self.tensor.shape[m] for m in modes]))
            unfolding = np.moveaxis(self.tensor, modes, tuple(range(len(modes)))).reshape(rows, -1)
            # eigh of the small (rows, rows) Gram is much cheaper than an SVD of the wide unfolding
            _, evecs = np.linalg.eigh(unfolding @ unfolding.T)
            self._bases[modes] = evecs[:, ::-1]
        return self._bases[modes][:, :k]


def svd_init(tensor: np.ndarray, rank: int, rng: np.random.Generator,
             bases: Optional[GramBases] = None) -> List[np.ndarray]:
    """Leading left singular vectors of each unfolding; modes shorter than ``rank`` (e.g. the
    kh*kw = 9 mode) keep all their singular vectors and get seeded random unit columns for the rest."""
    bases = bases or GramBases(tensor)
    factors = []
    for n, size in enumerate(tensor.shape):
        lead = bases.leading((n,), min(rank, size))
        if rank > size:
            lead = np.concatenate([lead, _unit_columns(rng.standard_normal((size, rank - size)))], axis=1)
        factors.append(lead)
    return factors


def _rank_one(slices: np.ndarray):
    """Best rank-1 approximation of each (P, Q) slice of ``slices`` (R, P, Q): (R, P) scaled, (R, Q) unit."""
    u, s, vt = np.linalg.svd(slices, full_matrices=False)
    return u[:, :, 0] * s[:, :1], vt[:, 0, :]


def gevd_init(tensor: np.ndarray, rank: int, bases: Optional[GramBases] = None) -> Optional[List[np.ndarray]]:
    """CP factors (I_n, R) from one generalized eigenvalue problem (GEVD, as in Tensorlab's
    ``cpd_gevd``), exact for a tensor of exact rank ``rank``; None where it does not apply.

    Seen as a 3-way (T, S, prod(kernel)) tensor, two modes p, q need >= ``rank`` entries (the third
    >= 2): compress them to their ``rank`` leading singular vectors U, V, giving a core G (R, R, K);
    two combinations of its K slices, G1 = A~ D1 B~^T and G2 = A~ D2 B~^T, give A~ as the eigenvectors
    of G1 G2^-1 = A~ D1 D2^-1 A~^-1, and A = U A~.  B~ and C are rank-1 fits of the rows of
    pinv(A~) G_(0), B = V B~ (and, for CP4, the kernel factors are rank-1 fits of each column of C
    reshaped to (kh, kw)).  Conjugate pairs of eigenvectors (a tensor that is not of exact rank)
    contribute their real and imaginary parts."""
    shape = tensor.shape
    bases = bases or GramBases(tensor)
    groups = [(0,), (1,), tuple(range(2, len(shape)))]  # the modes of the 3-way view (T, S, kernel)
    view = (shape[0], shape[1], int(np.prod(shape[2:])))
    order = sorted(range(3), key=lambda m: -view[m])  # the two largest modes first (stable)
    if view[order[1]] < rank or view[order[2]] < 2:
        return None
    p, q, o = order
    y = np.transpose(tensor.reshape(view), (p, q, o))  # (I, J, K)
    i, j, k = y.shape
    u, v = bases.leading(groups[p], rank), bases.leading(groups[q], rank)  # (I, R), (J, R)
    projected = (u.T @ y.reshape(i, j * k)).reshape(rank, j, k)  # (R, J, K)
    core = np.einsum("rjk,js->rsk", projected, v, optimize=True)  # (R, R, K)
    w = GramBases(core).leading((2,), 2)  # (K, 2): the two most informative slice combinations
    g1, g2 = core @ w[:, 0], core @ w[:, 1]  # (R, R)
    try:
        vals, vecs = np.linalg.eig(np.linalg.solve(g2.T, g1.T).T)  # eigenvectors of G1 G2^-1: (R, R)
    except np.linalg.LinAlgError:
        return None
    vecs = np.where(vals.imag[None, :] < 0, vecs.imag, vecs.real)
    # A = U vecs; the other two factors from the core: pinv(vecs) G_(0) = (C kr B~)^T, B = V B~
    rest = (np.linalg.pinv(vecs) @ core.reshape(rank, rank * k)).reshape(rank, rank, k)  # (R, R, K)
    b, c = _rank_one(rest)  # (R, R) in V's coordinates, (R, K)
    a, b = u @ vecs, b @ v.T  # (I, R), (R, J)
    by_mode = {p: a, q: b.T, o: c.T}
    factors = [by_mode[0], by_mode[1]]
    kernel = by_mode[2]  # (prod(kernel), R)
    for size in shape[2:-1]:  # CP4: split each kernel column (kh*kw,) into (kh,) x (kw,)
        first, kernel_t = _rank_one(kernel.T.reshape(rank, size, -1))
        factors.append(first.T)
        kernel = kernel_t.T
    factors.append(kernel)
    return factors if all(np.isfinite(f).all() for f in factors) else None


def random_init(shape: Sequence[int], rank: int, rng: np.random.Generator) -> List[np.ndarray]:
    return [_unit_columns(rng.standard_normal((size, rank))) for size in shape]


def adapt_init(factors: Sequence[np.ndarray], shape: Sequence[int], rank: int,
               rng: np.random.Generator) -> List[np.ndarray]:
    """Warm start from given factors of any rank: keep the ``rank`` strongest components
    (largest product of column norms), or pad with small random ones."""
    factors = [np.asarray(f, dtype=np.float64) for f in factors]
    if len(factors) != len(shape) or any(f.ndim != 2 or f.shape[0] != s for f, s in zip(factors, shape)):
        got = [tuple(f.shape) for f in factors]
        raise ValueError(f"init factors must be {len(shape)} matrices (I_n, R) for shape {tuple(shape)}, got {got}")
    r0 = factors[0].shape[1]
    if any(f.shape[1] != r0 for f in factors):
        raise ValueError(f"init factors disagree on the rank: {[f.shape[1] for f in factors]}")
    if not all(np.isfinite(f).all() for f in factors):
        raise ValueError("init factors contain NaN or Inf")
    strength = np.prod([np.linalg.norm(f, axis=0) for f in factors], axis=0)  # (r0,)
    keep = np.sort(np.argsort(-strength, kind="stable")[:rank])
    out = [f[:, keep] for f in factors]
    if rank > r0:
        small = 1e-3 * (strength.max() if r0 else 1.0) ** (1.0 / len(shape))
        out = [np.concatenate([f, small * _unit_columns(rng.standard_normal((f.shape[0], rank - r0)))], axis=1)
               for f in out]
    return out


# Measured (module docstring): rank-R kernels plus 0-10% noise fit below this from the GEVD start and
# end better from it; trained VGG11 kernels at the planner's ranks fit at >= 0.51 and keep the SVD start.
GEVD_START_MAX_ERROR = 0.25


def _exact_rank_start(tensor: np.ndarray, rank: int, norm_x: float,
                      bases: GramBases) -> Optional[List[np.ndarray]]:
    """The GEVD start where it applies and already fits (relative error below GEVD_START_MAX_ERROR:
    a tensor of exact or nearly exact rank ``rank``), else None."""
    start = gevd_init(tensor, rank, bases)
    if start is None or np.linalg.norm(tensor - reconstruct(start)) > GEVD_START_MAX_ERROR * norm_x:
        return None
    return start


class _Mttkrp:
    """Matricized-tensor-times-Khatri-Rao-product for every mode, largest other mode by one GEMM."""

    def __init__(self, tensor: np.ndarray):
        self.shape = tensor.shape
        self.n = tensor.ndim
        self.plans = []
        for mode in range(self.n):
            others = [m for m in range(self.n) if m != mode]
            big = max(others, key=lambda m: self.shape[m])
            rest = [m for m in range(self.n) if m != big]  # includes `mode`, in order
            mat = np.ascontiguousarray(np.moveaxis(tensor, big, -1)).reshape(-1, self.shape[big])
            letters = "abcdefgh"
            lhs = "".join(letters[m] for m in rest) + "r"
            small = [m for m in rest if m != mode]
            expr = lhs + "".join(f",{letters[m]}r" for m in small) + f"->{letters[mode]}r"
            self.plans.append((big, rest, small, mat, expr))

    def __call__(self, mode: int, factors: Sequence[np.ndarray]) -> np.ndarray:
        big, rest, small, mat, expr = self.plans[mode]
        y = (mat @ factors[big]).reshape(*[self.shape[m] for m in rest], -1)  # (rest..., R)
        return np.einsum(expr, y, *[factors[m] for m in small], optimize=True)  # (I_mode, R)


def _error(mttkrp: "_Mttkrp", norm_x: float, factors, weights, grams, m_last=None) -> float:
    """||X - X_hat|| / ||X|| from ||X||^2 - 2 <X, X_hat> + ||X_hat||^2 (one MTTKRP, no reconstruction)."""
    if m_last is None:
        m_last = mttkrp(len(factors) - 1, factors)
    full_gram = np.ones_like(grams[0])
    for g in grams:
        full_gram *= g
    inner = float(np.sum(m_last * factors[-1], axis=0) @ weights)
    sq = norm_x**2 - 2.0 * inner + float(weights @ full_gram @ weights)
    return float(np.sqrt(max(sq, 0.0)) / norm_x)


def _als_run(mttkrp: _Mttkrp, norm_x: float, init: List[np.ndarray], n_iter_max: int, tol: float,
             max_norm_ratio: float) -> ALSResult:
    """ALS sweeps with Bro-style line search: after each sweep try extrapolating along the last step
    (step it^(1/N)), keep it if it lowers the error; this gets ALS out of slow "swamps"."""
    n = len(init)
    factors = [_unit_columns(f.copy()) for f in init]
    rank = factors[0].shape[1]
    grams = [f.T @ f for f in factors]
    weights = np.ones(rank)
    prev_err, err, it, previous = np.inf, np.inf, 0, None
    for it in range(1, n_iter_max + 1):
        for mode in range(n):
            v = np.ones((rank, rank))
            for m in range(n):
                if m != mode:
                    v *= grams[m]
            m_mode = mttkrp(mode, factors)  # (I_mode, R)
            v[np.diag_indices(rank)] += 1e-12 * max(np.trace(v) / rank, 1e-300)  # keeps solve defined
            try:
                new = np.linalg.solve(v, m_mode.T).T
            except np.linalg.LinAlgError:
                new = m_mode @ np.linalg.pinv(v)
            weights = np.linalg.norm(new, axis=0)
            factors[mode] = new / np.where(weights > 0, weights, 1.0)
            grams[mode] = factors[mode].T @ factors[mode]
        if not (np.isfinite(weights).all() and all(np.isfinite(f).all() for f in factors)):
            raise Diverged(f"NaN/Inf in the factors at sweep {it}")
        if weights.max() > max_norm_ratio * norm_x:
            raise Diverged(
                f"diverging component norms at sweep {it} (largest {weights.max():.3g} vs ||W|| = {norm_x:.3g})"
            )
        err = _error(mttkrp, norm_x, factors, weights, grams, m_mode)
        current = factors[:-1] + [factors[-1] * weights]  # weights folded into the last mode
        if previous is not None and it > 2:
            step = it ** (1.0 / n)
            cand, cand_w = normalized([c + step * (c - p) for c, p in zip(current, previous)])
            if np.isfinite(cand_w).all() and cand_w.max() <= max_norm_ratio * norm_x:
                cand_grams = [f.T @ f for f in cand]
                cand_err = _error(mttkrp, norm_x, cand, cand_w, cand_grams)
                if cand_err < err:
                    factors, weights, grams, err = cand, cand_w, cand_grams, cand_err
                    current = factors[:-1] + [factors[-1] * weights]
        previous = current
        if err < 1e-13 or prev_err - err < tol * prev_err:
            break
        prev_err = err
    return ALSResult(factors, weights, float(err), it)


def cp_als(tensor: np.ndarray, rank: int, *, init: InitSpec = "svd", n_iter_max: int = 100,
           tol: float = 1e-6, seed: int = 0, n_restarts: int = 3, max_norm_ratio: float = 1e4,
           engine: str = DEFAULT_ENGINE) -> ALSResult:
    """CP of ``tensor`` at ``rank``; on NaN/Inf or diverging norms retry from seeded random inits.

    The first attempt that finishes without NaN/Inf or diverging component norms (largest norm above
    ``max_norm_ratio * ||X||``, the signature of degenerate, cancelling components) is returned.

    ``init``: 'svd', 'random' or factor matrices (I_n, R0) of any rank R0 (warm start).  'svd' starts
    from the GEVD factors (:func:`gevd_init`) where they already fit within ``GEVD_START_MAX_ERROR``
    (a kernel of exact or nearly exact rank ``rank``), else from the leading singular vectors.
    ``tol``: stop when a sweep lowers the relative error by less than ``tol`` times itself.
    ``engine``: "mtd" (the sweeps below) or "tensorly" (``tensorly.decomposition.parafac`` from the
    same starts; with ``init='svd'`` and a rank no larger than any mode, tensorly's own SVD init).
    """
    engine = check_engine(engine)
    tensor = np.asarray(tensor, dtype=np.float64)
    norm_x = float(np.linalg.norm(tensor))
    shape = tensor.shape
    rng = np.random.default_rng(seed)
    if norm_x == 0.0:  # an all-zero kernel is exactly rank 0: zero factors, zero error
        return ALSResult([np.zeros((s, rank)) for s in shape], np.zeros(rank), 0.0, 0)
    if isinstance(init, str):
        if init not in ("svd", "random"):
            raise ValueError(f"init must be 'svd', 'random' or a sequence of factors, got {init!r}")
        bases = GramBases(tensor)
        first = _exact_rank_start(tensor, rank, norm_x, bases) if init == "svd" else random_init(shape, rank, rng)
        if first is None and engine == "tensorly" and rank <= min(shape):
            first = "svd"  # tensorly's own SVD init: it only warns (and fills randomly) above a mode's size
        elif first is None:
            first = svd_init(tensor, rank, rng, bases)
    else:
        first = adapt_init(init, shape, rank, rng)
    if engine == "tensorly":
        def attempt_run(start):
            return tensorly_engine.parafac_run(tensor, norm_x, rank, start, n_iter_max, tol, max_norm_ratio, seed)
    else:
        mttkrp = _Mttkrp(tensor)

        def attempt_run(start):
            return _als_run(mttkrp, norm_x, start, n_iter_max, tol, max_norm_ratio)
    failures = []
    starts = [first] + [None] * n_restarts
    for attempt, start in enumerate(starts):
        if start is None:
            start = random_init(shape, rank, np.random.default_rng([seed, attempt]))
        try:
            return attempt_run(start)
        except Diverged as exc:
            failures.append(f"attempt {attempt}: {exc}")
    raise CPDecompositionError(
        f"CP-ALS of a tensor of shape {shape} at rank {rank} failed in all {len(starts)} attempts "
        f"(initial + {n_restarts} seeded random restarts): " + "; ".join(failures)
    )
