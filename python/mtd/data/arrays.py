"""The decoded data set as plain uint8/int64 numpy arrays."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

CIFAR10_CLASSES: Tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE: Tuple[int, int, int] = (32, 32, 3)  # HWC


@dataclass(frozen=True)
class CIFAR10Arrays:
    """Images as ``(N, 32, 32, 3)`` uint8 (HWC, RGB) and labels as ``(N,)`` int64 indices into ``classes``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: Tuple[str, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
                raise ValueError(f"{split}_x must be uint8 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{split}_y must be int64 of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"{split}_y has labels outside [0, {len(self.classes)})")

    def subset(self, train_images: int, test_images: int, seed: int = 0) -> "CIFAR10Arrays":
        """A seeded random subset of at most ``train_images`` / ``test_images`` images (smoke runs)."""
        rng = np.random.default_rng(seed)
        train = np.sort(rng.permutation(len(self.train_y))[:train_images])
        test = np.sort(rng.permutation(len(self.test_y))[:test_images])
        return CIFAR10Arrays(self.train_x[train], self.train_y[train], self.test_x[test], self.test_y[test],
                             self.classes)

    def split_validation(self, images: int, seed: int = 0, *, from_test: bool = False
                         ) -> Tuple["CIFAR10Arrays", "CIFAR10Arrays"]:
        """``(rest, validation)``: a seeded random ``images`` of the training (or ``from_test``: test) split
        moved out of ``rest`` into ``validation``'s training split (its test split is empty)."""
        x, y = (self.test_x, self.test_y) if from_test else (self.train_x, self.train_y)
        if not 0 < images < len(y):
            raise ValueError(f"cannot hold out {images} of the {len(y)} {'test' if from_test else 'training'} "
                             "images for validation")
        order = np.random.default_rng(seed).permutation(len(y))
        val, keep = np.sort(order[:images]), np.sort(order[images:])
        validation = CIFAR10Arrays(x[val], y[val], self.test_x[:0], self.test_y[:0], self.classes)
        if from_test:
            return CIFAR10Arrays(self.train_x, self.train_y, x[keep], y[keep], self.classes), validation
        return CIFAR10Arrays(x[keep], y[keep], self.test_x, self.test_y, self.classes), validation
