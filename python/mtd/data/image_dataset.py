"""Image folders of any size and any image size: ``root/<class>/<image>`` as a map-style ``Dataset`` whose images
are decoded when they are asked for (by ``DataLoader`` workers), not all at once into memory.

The CIFAR-style readers (:mod:`mtd.data.load`) decode every image up front into one uint8 array: right for
CIFAR-10 (60,000 images of 32x32, 180 MB decoded), impossible for ImageNet (1.28 M images at 224x224 would be
190 GB decoded). This reader keeps only the file list in memory (about 100 bytes an image) and the decoded
images of the batches in flight.

Nothing a file claims is trusted: a file larger than ``MAX_FILE_BYTES`` is not read, an image whose header
claims more than ``MAX_PIXELS`` pixels is not decoded (an image bomb), and an unreadable file raises a
``ValueError`` naming it. The listing counts files against :class:`~mtd.data.ReadLimits` ``max_members``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .decode import IMAGE_EXTENSIONS
from .image_folder import class_order
from .limits import ReadBudget, ReadLimits

MAX_FILE_BYTES = 64 << 20  # one encoded image; ImageNet's largest JPEGs are ~15 MB
MAX_PIXELS = 64 << 20  # 8k x 8k; decoding more would take ~200 MB for one image
TRAIN_SCALE = (0.35, 1.0)  # area fraction of a training crop (the usual random-resized crop, milder at low ratios)
TRAIN_RATIO = (3 / 4, 4 / 3)  # its aspect ratio


class ImageFolderDataset(Dataset):
    """``(image (3, size, size) float32, normalised; label)`` for every image file of ``root/<class>/``.

    Args:
        root: the folder holding one sub-folder per class.
        size: the side of the square images returned.
        mean, std: per-channel normalisation in [0, 1] units (three values each).
        train: a random crop of 35-100% of the area (aspect 3/4-4/3) resized to ``size``, and a random
            horizontal flip; otherwise the shorter side resized to ``size`` and the centre cropped.
        classes: the class order to label by (a validation folder takes its training folder's); by default the
            CIFAR-10 order for the CIFAR-10 classes and sorted names otherwise, as torchvision's ImageFolder.
        limits: ``max_members`` bounds the files listed.

    ``targets`` (one int per image) gives the labels without decoding anything.
    """

    def __init__(self, root: Union[str, os.PathLike], *, size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool, classes: Optional[Sequence[str]] = None, limits: ReadLimits = ReadLimits()):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{str(root)!r} is not a folder of class folders")
        if not (isinstance(size, int) and 1 <= size <= 4096):
            raise ValueError(f"size must be an int in [1, 4096], got {size!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need three values each (std > 0), got {mean!r} and {std!r}")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise ValueError(f"{str(root)!r} has no class folders (expected {root}/<class>/<image>)")
        self.classes = tuple(classes) if classes is not None else class_order(found)
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ValueError(f"{str(root)!r} has classes the labels do not know: {unknown[:5]}")
        budget = ReadBudget(str(root), limits)
        self.files: list[str] = []
        self.targets: list[int] = []
        for label, name in enumerate(self.classes):
            folder = root / name
            if not folder.is_dir():
                continue
            with os.scandir(folder) as listing:
                names = []
                for entry in listing:
                    budget.take_member()
                    if entry.is_file() and not entry.name.startswith(".") and \
                            entry.name.lower().endswith(IMAGE_EXTENSIONS):
                        names.append(entry.name)
            self.files += [str(folder / n) for n in sorted(names)]
            self.targets += [label] * len(names)
        if not self.files:
            raise ValueError(f"{str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.size, self.train = size, train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.files[index])
        image = _random_crop(image, self.size) if self.train else _center_crop(image, self.size)
        if self.train and torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (S, S, 3)
        x = pixels.permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std, self.targets[index]


def load_image(path: str) -> Image.Image:
    """The RGB image at ``path``; ValueError naming it if too large, claiming too many pixels, or unreadable."""
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"image {path!r} is {size:,} bytes, more than {MAX_FILE_BYTES:,}; not read")
    try:
        with Image.open(path) as image:  # the header only: the size is known before decoding
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"image {path!r} claims {width}x{height} pixels, more than {MAX_PIXELS:,}; "
                                 "not decoded")
            return image.convert("RGB")
    except Image.DecompressionBombError as err:  # PIL's own guard, at twice its pixel limit
        raise ValueError(f"image {path!r} claims too many pixels ({err}); not decoded") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot decode image {path!r}: {err}") from err


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to ``size``, then the centre ``size`` x ``size``."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def _random_crop(image: Image.Image, size: int) -> Image.Image:
    """A crop of a random area fraction and aspect ratio (``TRAIN_SCALE``, ``TRAIN_RATIO``), resized to ``size``;
    the centre crop when ten draws do not fit (very elongated images)."""
    w, h = image.size
    for _ in range(10):
        area = w * h * float(torch.empty(()).uniform_(*TRAIN_SCALE))
        ratio = math.exp(float(torch.empty(()).uniform_(math.log(TRAIN_RATIO[0]), math.log(TRAIN_RATIO[1]))))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, ()))
            top = int(torch.randint(0, h - ch + 1, ()))
            return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    return _center_crop(image, size)
