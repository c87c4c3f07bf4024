"""Calibration subsets drawn from the training split (never the test split)."""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from .arrays import CIFAR10Arrays


def calibration_split(arrays: Union[CIFAR10Arrays, int], n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Split the TRAINING set into ``(train_indices, calib_indices)``, disjoint and sorted.

    ``arrays`` is a :class:`CIFAR10Arrays` (its training split is used) or the training-set size.
    ``calib_indices`` are ``n`` indices drawn uniformly without replacement with ``seed``.
    """
    total = arrays if isinstance(arrays, int) else len(arrays.train_y)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n < total:
        raise ValueError(f"calibration size n must be an int in [1, {total - 1}], got {n!r}")
    order = np.random.default_rng(seed).permutation(total)
    return np.sort(order[n:]).astype(np.int64), np.sort(order[:n]).astype(np.int64)
