"""Accept the planner's training data in the forms users have, and split it reproducibly.

Accepted: an ``mtd.data.CIFAR10Arrays`` (its training split is used), or a pair ``(images, labels)``
where images are uint8 ``(N, H, W, C)`` (normalised by ``mtd.data.TensorDataLoader``) or an already
normalised float tensor ``(N, C, H, W)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch


@dataclass
class PlanningData:
    """Images + labels with a way to iterate batches of any index subset."""

    images: Any  # uint8 (N, H, W, C) numpy/tensor, or float (N, C, H, W) tensor
    labels: torch.Tensor  # (N,) int64

    @property
    def is_uint8(self) -> bool:
        return self.images.dtype in (np.uint8, torch.uint8)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def loader(self, indices: np.ndarray, batch_size: int, *, train: bool, device: torch.device,
               seed: int = 0) -> Any:
        """An iterable of (x, y) batches on ``device`` over ``indices`` (shuffled + augmented if ``train``)."""
        if self.is_uint8:
            from ..data import TensorDataLoader

            x = self.images[indices]
            y = self.labels[torch.as_tensor(indices)]
            return TensorDataLoader(x, y, batch_size=batch_size, train=train, device=device, seed=seed)
        return _FloatLoader(self.images[torch.as_tensor(indices)], self.labels[torch.as_tensor(indices)],
                            batch_size, train, device, seed)

    def batches(self, indices: np.ndarray, batch_size: int, device: torch.device) -> list:
        """All (x, y) batches over ``indices`` in order, materialised (for repeated scoring)."""
        return [(x, y) for x, y in self.loader(indices, batch_size, train=False, device=device)]


class _FloatLoader:
    """Minimal batch iterator for pre-normalised float tensors (shuffles per epoch when training)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool, device: torch.device,
                 seed: int):
        self.x, self.y, self.batch_size, self.train, self.device = x, y, batch_size, train, device
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y), generator=self.generator) if self.train else torch.arange(len(self.y))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx].to(self.device), self.y[idx].to(self.device)


def as_planning_data(train_data: Any) -> PlanningData:
    """Normalise ``train_data`` (see module docstring) into :class:`PlanningData`."""
    if hasattr(train_data, "train_x") and hasattr(train_data, "train_y"):
        images, labels = train_data.train_x, train_data.train_y
    elif isinstance(train_data, (tuple, list)) and len(train_data) == 2:
        images, labels = train_data
    else:
        raise TypeError("train_data must be an mtd.data.CIFAR10Arrays or a pair (images, labels); got "
                        f"{type(train_data).__name__}")
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images must be 4-D with one label each; got images {tuple(images.shape)} and "
                         f"labels {tuple(labels.shape)}")
    if images.dtype in (np.uint8, torch.uint8):
        if images.shape[-1] not in (1, 3):
            raise ValueError(f"uint8 images must be (N, H, W, C) with C in (1, 3); got {tuple(images.shape)}")
    elif isinstance(images, torch.Tensor) and images.is_floating_point():
        pass
    elif isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
        images = torch.from_numpy(images)
    else:
        raise TypeError(f"images must be uint8 (N, H, W, C) or float (N, C, H, W); got dtype {images.dtype}")
    return PlanningData(images, labels)


@dataclass(frozen=True)
class Splits:
    """Disjoint index sets of the training data: calibration, held-out verification, fine-tuning."""

    calibration: np.ndarray
    holdout: np.ndarray
    finetune: np.ndarray


def make_splits(n: int, calib_size: int, holdout_size: int, seed: int) -> Splits:
    """Seeded random split; fine-tuning uses everything except the held-out images."""
    if calib_size < 1:
        raise ValueError(f"calib_size must be >= 1, got {calib_size}")
    if calib_size + holdout_size > n:
        raise ValueError(f"calib_size ({calib_size}) + holdout_size ({holdout_size}) exceed the {n} "
                         "training images available")
    order = np.random.default_rng(seed).permutation(n)
    calib = np.sort(order[:calib_size])
    holdout = np.sort(order[calib_size:calib_size + holdout_size])
    finetune = np.sort(np.concatenate([order[:calib_size], order[calib_size + holdout_size:]]))
    return Splits(calib, holdout, finetune)
