"""``TensorDataLoader``: the whole data set lives on the device as one uint8 tensor.

Each batch is gathered, augmented (random crop with 4-pixel zero padding + horizontal flip) in one
vectorised indexing op, normalised and converted to float there — no per-image Python and no
host-to-device copies per batch. The shuffle order and augmentation of an epoch depend only on
``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted run would.

With ``views=K`` the augmentation is instead a pure function of (image id, view), view = epoch mod K: the same
view of an image has the same pixels in any batch, order, seed or process. Each batch then carries the keys
``id * K + view`` (:class:`KeyedBatch`), so a teacher's outputs can be computed once per view and reused
(``mtd.train.teacher_bank``; consistent teaching, Beyer et al. CVPR 2022).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import CIFAR10_MEAN, CIFAR10_STD

ArrayLike = Union[np.ndarray, torch.Tensor]
CROP_PADDING = 4


class KeyedBatch(tuple):
    """An ``(images, labels)`` pair that also carries ``keys`` (B,) int64: ``image id * views + view``."""

    keys: torch.Tensor

    def __new__(cls, images: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor) -> "KeyedBatch":
        batch = super().__new__(cls, (images, labels))
        batch.keys = keys
        return batch


VIEW_AUGMENTATION = "crop4-flip-splitmix64-v1"  # names what view_augmentation computes (teacher banks key on it)


def view_augmentation(ids: ArrayLike, view: int, padding: int = CROP_PADDING) -> Tuple[torch.Tensor, ...]:
    """``(crop_y, crop_x, flip)`` of view ``view`` of the images ``ids``: a hash (splitmix64) of (id, view), so
    the same in every process and independent of batch, order and seed."""
    z = (np.asarray(ids, dtype=np.uint64) << np.uint64(16)) ^ np.uint64(view)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    span = np.uint64(2 * padding + 1)
    crop_y, crop_x, flip = z % span, (z // span) % span, (z // (span * span)) % np.uint64(2) == 1
    return (torch.from_numpy(crop_y.astype(np.int64)), torch.from_numpy(crop_x.astype(np.int64)),
            torch.from_numpy(flip))


class TensorDataLoader:
    """Batches ``(images float (B, 3, H, W), labels int64 (B,))`` from uint8 ``(N, H, W, 3)`` images.

    ``train=True`` turns on shuffling, augmentation and ``drop_last`` (each can be overridden).
    ``rank``/``world_size`` shard every epoch like ``DistributedSampler``: in training the order is
    padded by wrapping around so that every rank gets the same number of batches.
    ``views=K`` makes the augmentation a function of (``ids[i]``, epoch mod K) and yields :class:`KeyedBatch`es;
    ``ids`` (default ``0..N-1``) are the images' ids in the whole data set (unique, < 2**40).
    """

    def __init__(self, x_uint8: ArrayLike, y: ArrayLike, batch_size: int, *, train: bool,
                 device: Union[str, torch.device] = "cpu", channels_last: bool = False, seed: int = 0,
                 drop_last: Optional[bool] = None, shuffle: Optional[bool] = None, augment: Optional[bool] = None,
                 rank: int = 0, world_size: int = 1, dtype: torch.dtype = torch.float32,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 views: Optional[int] = None, ids: Optional[ArrayLike] = None):
        images = torch.as_tensor(x_uint8)
        labels = torch.as_tensor(y)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != len(mean):
            raise ValueError(f"images must be uint8 (N, H, W, {len(mean)}), got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        if views is not None and not (isinstance(views, int) and 1 <= views <= 1 << 16):
            raise ValueError(f"views must be an int in [1, 65536] or None, got {views!r}")
        ids = np.arange(images.shape[0]) if ids is None else np.asarray(ids)
        if ids.shape != (images.shape[0],) or not np.issubdtype(ids.dtype, np.integer) or (
                len(ids) and (ids.min() < 0 or ids.max() >= 1 << 40)):
            raise ValueError(f"ids must be {images.shape[0]} integers in [0, 2**40), got {ids.dtype} {ids.shape}")
        self.views, self.ids = views, torch.from_numpy(ids.astype(np.int64))
        self.device = torch.device(device)
        # (N, H, W, C) -> (N, C, H, W) uint8, once, on the device.
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = labels.to(torch.int64).to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.augment = train if augment is None else augment
        if views is not None and not self.augment:
            self.views = 1  # every epoch shows the same pixels: one view
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.dtype = dtype
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # x_float = (x / 255 - mean) / std = x * scale + shift
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        n = self.images.shape[0]
        if self.world_size == 1:
            return n
        if self.shuffle:  # padded so that all ranks get the same count
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle/augmentation of ``epoch`` (iteration also advances it by one)."""
        self.epoch = int(epoch)

    def epoch_plan(self, epoch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's ``(indices, crop_y, crop_x, flip)`` for ``epoch`` (CPU tensors)."""
        n = self.images.shape[0]
        gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.world_size > 1 and self.shuffle:
            total = math.ceil(n / self.world_size) * self.world_size
            order = torch.cat([order, order[: total - n]])
        # Augmentation is drawn for every global position, then sharded: independent of world_size.
        if self.views is not None:
            crop_y, crop_x, flip = view_augmentation(self.ids[order].numpy(), epoch % self.views)
        else:
            span = 2 * CROP_PADDING + 1
            crop_y = torch.randint(0, span, (len(order),), generator=gen)
            crop_x = torch.randint(0, span, (len(order),), generator=gen)
            flip = torch.rand(len(order), generator=gen) < 0.5
        shard = slice(self.rank, None, self.world_size)
        return order[shard], crop_y[shard], crop_x[shard], flip[shard]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        view = None if self.views is None else self.epoch % self.views
        order, crop_y, crop_x, flip = (t.to(self.device) for t in self.epoch_plan(self.epoch))
        self.epoch += 1
        for batch in range(len(self)):
            sl = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            idx = order[sl]
            images = self.images[idx]  # (B, C, H, W) uint8
            if self.augment:
                images = crop_and_flip(images, crop_y[sl], crop_x[sl], flip[sl])
            if view is None:
                yield self._normalise(images), self.labels[idx]
            else:  # keys on the CPU: they index the teacher bank, which lives there
                yield KeyedBatch(self._normalise(images), self.labels[idx], self.ids[idx.cpu()] * self.views + view)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.addcmul(self._shift, images.float(), self._scale)  # (B, C, H, W) float32
        return out.to(dtype=self.dtype, memory_format=memory_format)


def crop_and_flip(images: torch.Tensor, crop_y: torch.Tensor, crop_x: torch.Tensor, flip: torch.Tensor,
                  padding: int = CROP_PADDING) -> torch.Tensor:
    """Per-image random crop (offsets in ``[0, 2*padding]`` into the zero-padded image) and optional h-flip.

    ``images`` (B, C, H, W); ``crop_y``/``crop_x`` (B,) ints; ``flip`` (B,) bool. One gather for the batch.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p), zeros
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = crop_y.view(b, 1) + ar_h  # (B, H)
    cols_ar = torch.where(flip.view(b, 1), (w - 1) - ar_w, ar_w)  # (B, W): reversed for flipped images
    cols = crop_x.view(b, 1) + cols_ar  # (B, W)
    batch_idx = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chan_idx = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch_idx, chan_idx, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
