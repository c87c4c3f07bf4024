"""One CP attempt and one Tucker-2 by tensorly 0.10 (``engine="tensorly"``), numpy backend.

The restart loop, the inits, the balancing and the error reporting are the shared ones of
``cp_als.py`` / ``cp.py`` / ``tucker.py``; only the sweeps run in tensorly.  The backend is set
locally with ``engines.numpy_backend()`` (this thread only, for the duration of the call; the
caller's backend is restored) because the package works on float64 numpy arrays.

tensorly's own stopping rule is an absolute decrease of the relative error; for CP we pass
``tol=0`` and stop from a ``callback`` with the in-house rule (relative decrease below ``tol``),
which also catches NaN/Inf and diverging component norms after every sweep.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np
from tensorly.cp_tensor import CPTensor
from tensorly.decomposition import parafac, partial_tucker

from .cp_result import ALSResult, Diverged, normalized
from .engines import numpy_backend

Start = Union[str, Sequence[np.ndarray]]  # "svd" (tensorly's own SVD init) or factors (I_n, R)


class _SweepMonitor:
    """parafac callback: in-house stopping rule plus NaN/Inf and divergence detection."""

    def __init__(self, norm_x: float, tol: float, max_norm_ratio: float):
        self.norm_x, self.tol, self.max_norm_ratio = norm_x, tol, max_norm_ratio
        self.calls = 0  # the first call reports the init, then one per sweep
        self.prev = np.inf
        self.failure = ""

    @property
    def sweeps(self) -> int:
        return max(self.calls - 1, 0)

    def __call__(self, cp: CPTensor, rel_err: float) -> bool:
        self.calls += 1
        weights, factors = cp
        norms = np.abs(weights) * np.prod([np.linalg.norm(f, axis=0) for f in factors], axis=0)  # (R,)
        if not (np.isfinite(norms).all() and np.isfinite(rel_err)):
            self.failure = f"NaN/Inf in the factors at sweep {self.sweeps}"
            return True
        if norms.max() > self.max_norm_ratio * self.norm_x:
            self.failure = (f"diverging component norms at sweep {self.sweeps} "
                            f"(largest {norms.max():.3g} vs ||W|| = {self.norm_x:.3g})")
            return True
        if self.calls == 1 or rel_err == self.prev:
            return False  # the init, or a line-search sweep (tensorly reports the previous error there)
        stop = rel_err < 1e-13 or self.prev - rel_err < self.tol * self.prev
        self.prev = float(rel_err)
        return bool(stop)


def parafac_run(tensor: np.ndarray, norm_x: float, rank: int, start: Start, n_iter_max: int, tol: float,
                max_norm_ratio: float, seed: int) -> ALSResult:
    """One ``tensorly.decomposition.parafac`` attempt (with tensorly's line search, which gets ALS
    out of slow "swamps" like the in-house one); raises ``Diverged`` on NaN/Inf, diverging norms or
    a singular ALS system.  ``start``: factors (I_n, R), or "svd" for tensorly's own SVD init, allowed
    only for ``rank`` <= every mode's size (above it tensorly warns and fills randomly)."""
    if isinstance(start, str) and (start != "svd" or rank > min(tensor.shape)):
        raise ValueError(f"string start must be 'svd' with rank <= every mode size {tensor.shape}, "
                         f"got {start!r} at rank {rank}")
    monitor = _SweepMonitor(norm_x, tol, max_norm_ratio)
    with numpy_backend():
        init = start if isinstance(start, str) else CPTensor(
            (np.ones(rank), [np.array(f, dtype=np.float64) for f in start]))
        try:
            cp, errors = parafac(tensor, rank, n_iter_max=n_iter_max, init=init, tol=0, return_errors=True,
                                 callback=monitor, random_state=seed, normalize_factors=False, linesearch=True)
        except np.linalg.LinAlgError as exc:  # singular normal equations: degenerate components
            raise Diverged(f"singular ALS system at sweep {monitor.sweeps + 1} ({exc})") from exc
    if monitor.failure:
        raise Diverged(monitor.failure)
    weights, factors = cp
    raw = [np.asarray(factors[0]) * np.asarray(weights)] + [np.asarray(f) for f in factors[1:]]
    unit, norms = normalized(raw)  # weights were all ones: now unit columns and the component norms
    if not (np.isfinite(norms).all() and all(np.isfinite(f).all() for f in unit)):
        raise Diverged(f"NaN/Inf in the factors after sweep {monitor.sweeps}")
    if norms.max() > max_norm_ratio * norm_x:
        raise Diverged(f"diverging component norms after sweep {monitor.sweeps} "
                        f"(largest {norms.max():.3g} vs ||W|| = {norm_x:.3g})")
    return ALSResult(unit, norms, float(errors[-1]) if errors else float("nan"), monitor.sweeps)


def partial_tucker2(x: np.ndarray, r1: int, r2: int, n_iter_max: int, tol: float, seed: int,
                    n_restarts: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of a (T, S, K) tensor by ``partial_tucker(modes=[0, 1], init='svd')``; on NaN/Inf
    retries ``n_restarts`` times from seeded random inits.  Returns core (r2, r1, K), u_out (T, r2),
    u_in (S, r1).  ``tol`` is tensorly's: absolute decrease of the relative error."""
    inits: List[Tuple[str, int]] = [("svd", seed)] + [("random", seed + 1 + i) for i in range(n_restarts)]
    failures = []
    with numpy_backend():
        for init, state in inits:
            (core, (u_out, u_in)), _ = partial_tucker(x, [r2, r1], modes=[0, 1], init=init, n_iter_max=n_iter_max,
                                                      tol=tol, random_state=state)
            if all(np.isfinite(a).all() for a in (core, u_out, u_in)):
                return np.asarray(core), np.asarray(u_out), np.asarray(u_in)
            failures.append(f"init={init!r} (random_state={state}) gave NaN/Inf")
    raise FloatingPointError(f"tensorly partial_tucker of shape {x.shape} at ranks ({r1}, {r2}) failed: "
                             + "; ".join(failures))
