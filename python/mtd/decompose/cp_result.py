"""What both CP engines share: the result of one ALS run, the divergence signal and column normalising.

Below ``cp_als.py`` (the in-house ALS and the restart loop) and ``tensorly_engine.py`` (tensorly's
``parafac`` in that loop), so neither imports the other's internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np


class Diverged(Exception):
    """One ALS attempt produced NaN/Inf or diverging component norms (the restart loop tries the next)."""


@dataclass
class ALSResult:
    factors: List[np.ndarray]  # mode n: (I_n, R), columns of unit norm
    weights: np.ndarray  # (R,) component norms
    rel_error: float  # from the cheap Gram-based formula; recomputed exactly by callers
    n_iter: int


def normalized(raw: Sequence[np.ndarray]) -> Tuple[List[np.ndarray], np.ndarray]:
    """Unit-norm columns and the product of the column norms as weights."""
    norms = [np.linalg.norm(f, axis=0) for f in raw]
    factors = [f / np.where(n > 0, n, 1.0) for f, n in zip(raw, norms)]
    return factors, np.prod(norms, axis=0)
