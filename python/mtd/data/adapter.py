"""Adapt the planner's data from the forms users have, without guessing how to normalise it.

Accepted (training or validation data):

- an ``mtd.data.CIFAR10Arrays``: its training split, normalised with CIFAR-10's mean/std (or the given
  ones) and, when fine-tuning, augmented with CIFAR's random crop + flip;
- a pair ``(images, labels)``: uint8 ``(N, H, W, C)`` images need an explicit ``mean``/``std`` (in
  [0, 1] units, one value per channel); float ``(N, C, H, W)`` images are taken as already normalised;
- a ``torch.utils.data.Dataset`` returning ``(image, label)`` (e.g. torchvision's ``ImageFolder`` with
  ``ToTensor`` + ``Normalize``), or a ``DataLoader`` over one (its dataset, ``collate_fn`` and
  ``num_workers`` are used; batches are drawn over the planner's index subsets). Float images are taken
  as normalised, uint8 ``(C, H, W)`` images need ``mean``/``std``. The dataset's own transforms are the
  only augmentation.

Images may have any size the model takes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from .arrays import CIFAR10_MEAN, CIFAR10_STD
from .loader import TensorDataLoader

Batch = tuple[torch.Tensor, torch.Tensor]  # (x float (N, C, H, W) normalised, y int64 (N,)) on the device


class PlanningData:
    """Images + labels with a way to iterate batches of any index subset (what ``compress`` uses)."""

    labels: torch.Tensor  # (N,) int64, every label

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def loader(self, indices: np.ndarray, batch_size: int, *, train: bool, device: torch.device,
               seed: int = 0, views: Optional[int] = None, rank: int = 0, world_size: int = 1) -> Any:
        """A re-iterable of ``(x, y)`` batches on ``device`` over ``indices`` (shuffled, and augmented where
        the source defines augmentation, if ``train``); has ``len()`` (batches per pass).

        ``views=K``: where the source can (uint8 arrays), the augmentation is a function of (image index,
        epoch mod K) and batches are ``mtd.data.loader.KeyedBatch``es keyed by it; other sources ignore it.
        ``rank``/``world_size``: this rank's shard of every pass (``train``: the global order padded by wrapping
        around, so that every rank gets the same number of batches, as ``DistributedSampler`` does)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A digest of the images, labels and normalisation (what keys a persistent teacher bank)."""
        raise NotImplementedError(f"{type(self).__name__} has no fingerprint")

    def batches(self, indices: np.ndarray, batch_size: int, device: torch.device) -> list[Batch]:
        """All (x, y) batches over ``indices`` in order, materialised (for repeated scoring)."""
        return list(self.loader(indices, batch_size, train=False, device=device))


@dataclass
class ArrayData(PlanningData):
    """In-memory images: uint8 ``(N, H, W, C)`` with their normalisation, or normalised float ``(N, C, H, W)``."""

    images: Any  # uint8 (N, H, W, C) numpy/tensor, or float (N, C, H, W) tensor
    labels: torch.Tensor
    mean: Optional[tuple[float, ...]] = None  # uint8 only
    std: Optional[tuple[float, ...]] = None
    augment: bool = False  # CIFAR crop + flip when training (CIFAR10Arrays only)

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for array in (self.images, self.labels):
            t = torch.as_tensor(array).detach().to("cpu").contiguous()
            h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        h.update(f"{self.mean}|{self.std}|{self.augment}".encode())
        return h.hexdigest()

    def loader(self, indices, batch_size, *, train, device, seed=0, views=None, rank=0, world_size=1):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if self.mean is not None:  # uint8
            return TensorDataLoader(self.images[np.asarray(indices)], self.labels[idx], batch_size=batch_size,
                                    train=train, augment=train and self.augment, device=device, seed=seed,
                                    mean=self.mean, std=self.std, views=views, ids=np.asarray(indices),
                                    rank=rank, world_size=world_size)
        return _FloatLoader(self.images[idx], self.labels[idx], batch_size, train, device, seed, rank, world_size)


class _FloatLoader:
    """Batches of pre-normalised float tensors (shuffled per pass when training; rank ``rank``'s shard)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool, device: torch.device,
                 seed: int, rank: int = 0, world_size: int = 1):
        self.x, self.y, self.batch_size, self.train, self.device = x, y, batch_size, train, device
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = rank, world_size

    def _samples(self) -> int:
        n = len(self.y)
        return -(-n // self.world_size) if self.train else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return (self._samples() + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        if self.world_size > 1:
            if self.train:  # padded by wrapping around: every rank the same number of batches
                order = torch.cat([order, order[:self._samples() * self.world_size - n]])
            order = order[self.rank::self.world_size]
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx].to(self.device), self.y[idx].to(self.device)


@dataclass
class DatasetData(PlanningData):
    """A map-style ``Dataset`` of ``(image (C, H, W), label)``, read through ``DataLoader``s."""

    dataset: Dataset
    labels: torch.Tensor
    mean: Optional[tuple[float, ...]] = None  # set for uint8 images
    std: Optional[tuple[float, ...]] = None
    num_workers: int = 0
    collate_fn: Any = None

    def loader(self, indices, batch_size, *, train, device, seed=0, views=None, rank=0, world_size=1):
        subset = Subset(self.dataset, [int(i) for i in indices])
        sampler = None
        if world_size > 1:  # its shuffle is seeded by (seed, epoch): _DeviceLoader.set_epoch advances it
            sampler = DistributedSampler(subset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                         drop_last=False)
        generator = torch.Generator().manual_seed(seed)
        inner = DataLoader(subset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                           generator=generator, num_workers=self.num_workers, collate_fn=self.collate_fn,
                           pin_memory=torch.device(device).type == "cuda")
        return _DeviceLoader(inner, torch.device(device), self.mean, self.std)


class _DeviceLoader:
    """Moves a DataLoader's batches to the device (and normalises uint8 images there)."""

    def __init__(self, inner: DataLoader, device: torch.device, mean, std):
        self.inner, self.device = inner, device
        self.scale_shift = None
        if mean is not None:  # x_float = (x / 255 - mean) / std = x * scale + shift
            m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.scale_shift = (1.0 / (255.0 * s), -m / s)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        """A sharded loader's shuffle for ``epoch`` (``DistributedSampler`` draws it from the seed and epoch)."""
        if hasattr(self.inner.sampler, "set_epoch"):
            self.inner.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self.inner:
            x = x.to(self.device, non_blocking=True)
            if self.scale_shift is not None:
                x = torch.addcmul(self.scale_shift[1], x.float(), self.scale_shift[0])
            yield x, torch.as_tensor(y).to(self.device, torch.int64, non_blocking=True)


def as_planning_data(data: Any, *, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None) -> PlanningData:
    """Wrap ``data`` (see the module docstring) as :class:`PlanningData`.

    ``mean``/``std`` normalise uint8 images (``x / 255``, then per channel); they are required for uint8
    data other than ``CIFAR10Arrays`` and rejected for float images, which are taken as normalised.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (per-channel normalisation of uint8 images), or neither")
    norm = None if mean is None else (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    if isinstance(data, DataLoader):
        return _from_dataset(data.dataset, norm, num_workers=data.num_workers, collate_fn=data.collate_fn)
    if isinstance(data, Dataset):
        return _from_dataset(data, norm)
    if hasattr(data, "train_x") and hasattr(data, "train_y"):  # CIFAR10Arrays: the known data set
        return _from_arrays(data.train_x, data.train_y, norm or (CIFAR10_MEAN, CIFAR10_STD), augment=True)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _from_arrays(*data, norm, augment=False)
    raise TypeError("train_data / val_data must be a torch Dataset or DataLoader of (image, label), an "
                    f"mtd.data.CIFAR10Arrays or a pair (images, labels); got {type(data).__name__}")


def _from_arrays(images: Any, labels: Any, norm, augment: bool) -> ArrayData:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images must be 4-D with one label each; got images {tuple(images.shape)} and "
                         f"labels {tuple(labels.shape)}")
    if images.dtype in (np.uint8, torch.uint8):
        if norm is None:
            raise ValueError("uint8 images need an explicit normalisation: pass mean=... and std=... (per channel, "
                             "in [0, 1] units, e.g. ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)), "
                             "or pass float images normalised the way the model was trained")
        _check_channels(norm, int(images.shape[-1]), "uint8 images (N, H, W, C)")
        return ArrayData(images, labels, norm[0], norm[1], augment)
    if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
        images = torch.from_numpy(images)
    if not (isinstance(images, torch.Tensor) and images.is_floating_point()):
        raise TypeError(f"images must be uint8 (N, H, W, C) or float (N, C, H, W); got dtype {images.dtype}")
    _reject_norm_for_float(norm)
    return ArrayData(images, labels)


def _from_dataset(dataset: Dataset, norm, num_workers: int = 0, collate_fn: Any = None) -> DatasetData:
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError("the planner draws index subsets of the data: pass a map-style Dataset (with __len__ and "
                        f"__getitem__), not {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise ValueError(f"dataset items must be (image, label) pairs; item 0 is {type(item).__name__}")
    x = item[0]
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"dataset images must be (C, H, W) tensors; item 0 has a {type(x).__name__}"
                         f"{' of shape ' + str(tuple(x.shape)) if isinstance(x, torch.Tensor) else ''} (add a "
                         "transform such as torchvision's ToTensor() + Normalize(mean, std))")
    if x.dtype == torch.uint8:
        if norm is None:
            raise ValueError("the dataset returns uint8 images: pass mean=... and std=... (per channel, in [0, 1] "
                             "units), or add Normalize to its transform")
        _check_channels(norm, int(x.shape[0]), "dataset images (C, H, W)")
    elif x.is_floating_point():
        _reject_norm_for_float(norm)
    else:
        raise TypeError(f"dataset images must be float or uint8 tensors, got {x.dtype}")
    mean, std = norm if norm is not None else (None, None)
    return DatasetData(dataset, dataset_labels(dataset), mean, std, num_workers, collate_fn)


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every label of ``dataset`` (1-D int64): from ``targets`` (torchvision), a ``TensorDataset`` or a
    ``Subset`` of one without reading images; otherwise by reading every item once."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        labels = dataset.tensors[1]
    elif getattr(dataset, "targets", None) is not None:
        labels = dataset.targets
    else:
        labels = [dataset[i][1] for i in range(len(dataset))]
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"dataset labels must be class indices (ints); got {labels.dtype} {tuple(labels.shape)}")
    return labels.long()


def _check_channels(norm, channels: int, what: str) -> None:
    if len(norm[0]) != channels or len(norm[1]) != channels:
        raise ValueError(f"mean/std have {len(norm[0])}/{len(norm[1])} values but the {what} have {channels} "
                         "channels")
    if min(norm[1]) <= 0:
        raise ValueError(f"std must be positive, got {norm[1]}")


def _reject_norm_for_float(norm) -> None:
    if norm is not None:
        raise ValueError("mean/std normalise uint8 images; these images are float and are taken as already "
                         "normalised (normalise them yourself, or pass uint8 images)")
