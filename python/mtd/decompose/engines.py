"""Which implementation runs a CP / Tucker-2 decomposition: the in-house numpy one or tensorly's.

``"mtd"`` (the default, :data:`DEFAULT_ENGINE`) is the in-house CP-ALS / HOOI of ``cp_als.py`` and
``tucker.py``: several times faster than tensorly 0.10 on the 512x512x3x3 VGG16 kernels on the
2-core dev machine (see ``benchmarks/results/bench_decompose.md``).  ``"tensorly"`` runs
``tensorly.decomposition.parafac`` / ``partial_tucker`` (numpy backend) behind the same inits,
restarts, divergence checks, balancing and error reporting.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import tensorly as tl

ENGINES = ("mtd", "tensorly")
DEFAULT_ENGINE = "mtd"


def check_engine(engine) -> str:
    """Return ``engine`` or raise a ValueError naming the allowed engines."""
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine


def numpy_backend() -> AbstractContextManager:
    """tensorly's numpy backend for this thread during a ``with`` block (the caller's is restored):
    the package works on float64 numpy arrays whatever backend a user chose globally."""
    return tl.backend_context("numpy", local_threadsafe=True)
