"""The command line on image folders of any size and image size (``--image-size``): images decoded on the fly by
``DataLoader`` workers (:class:`mtd.data.image_dataset.ImageFolderDataset`) instead of all at once into memory.

Where the threshold is, and why: without ``--image-size`` the command line reads CIFAR-style 32x32 sources and
decodes them up front into one uint8 array (3 KB an image: CIFAR-10's 60,000 images take 180 MB, and every epoch
then costs no decoding). With ``--image-size`` it decodes on the fly: at 224x224 an image takes 150 KB decoded, so
the 1 GiB that the in-memory readers allow would hold only about 7,000 images (ImageNet's 1.28 million would take
190 GB), while decoding in worker processes overlaps the training steps.

Layouts: ``--data ROOT`` with ``ROOT/train/<class>/`` and ``ROOT/test/<class>/``, or ``--data TRAIN --val-data
VAL``, each a folder of class folders; a tarball (.tar, .tar.gz, .tar.bz2, .tar.xz) of either is unpacked once into
the cache folder (``mtd.data.extract``: a compressed tar cannot be read in random order) and read from there. ``--val-images N`` (default: half of the test images) of the test images
verify the budget, with the evaluation transform; the others report the test accuracy.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .common import CLIError, parse_floats

SMOKE_FOLDER_IMAGES = (500, 200)  # --smoke: training and test images kept


@dataclass
class FolderData:
    """What ``mtd compress`` needs from image folders: DataLoaders over the datasets (they lend their workers)."""

    train: Any  # DataLoader over the training images (training transform)
    val: Any  # DataLoader over the test images that verify the budget
    report: Any  # DataLoader over the other test images
    classes: tuple
    description: str


def folder_data(args, batch_size: int = 128) -> FolderData:
    """The training and test folders (or tarballs) named by ``--data`` / ``--val-data``, at ``--image-size``; CLIError
    for a missing layout, an unreadable tarball, missing normalisation or an impossible ``--val-images``."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..data.image_dataset import ImageFolderDataset

    if args.mean is None or args.std is None:
        raise CLIError("--image-size needs --mean and --std (the normalisation your model was trained with)")
    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    train_root, test_root = _roots(args.data, args.val_data)
    try:
        train = ImageFolderDataset(train_root, size=args.image_size, mean=mean, std=std, train=True)
        test = ImageFolderDataset(test_root, size=args.image_size, mean=mean, std=std, train=False,
                                  classes=train.classes)
    except ValueError as err:
        raise CLIError(str(err)) from None
    rng = np.random.default_rng(args.seed)
    train_idx, test_idx = np.arange(len(train)), rng.permutation(len(test))
    if args.smoke:
        train_idx = np.sort(rng.permutation(len(train))[:SMOKE_FOLDER_IMAGES[0]])
        test_idx = test_idx[:SMOKE_FOLDER_IMAGES[1]]
    n_val = args.val_images if args.val_images is not None else len(test_idx) // 2
    if not 0 < n_val < len(test_idx):
        raise CLIError(f"--val-images must be between 1 and {len(test_idx) - 1} (the rest of the "
                       f"{len(test_idx)} test images report the accuracy), got {n_val}")
    workers = min(4, os.cpu_count() or 1)
    loader = lambda ds, idx: DataLoader(Subset(ds, [int(i) for i in idx]), batch_size=batch_size,  # noqa: E731
                                        num_workers=workers, persistent_workers=False)
    torch.manual_seed(args.seed)  # the training crops drawn in the workers
    description = (f"{len(train_idx)} training images in {len(train.classes)} classes from {train_root}, decoded on "
                   f"the fly at {args.image_size}x{args.image_size}; verifying the budget on {n_val} test images "
                   f"from {test_root}, reporting on the other {len(test_idx) - n_val}")
    return FolderData(loader(train, train_idx), loader(test, np.sort(test_idx[:n_val])),
                      loader(test, np.sort(test_idx[n_val:])), train.classes, description)


def test_folder(args, batch_size: int):
    """``mtd eval --image-size``: a DataLoader over ``--data``'s ``test/`` folder (or ``--data`` itself, a folder of
    class folders), with the test transform; its classes in the order ``mtd compress`` labels them by
    (``train/``'s beside it, where there is one)."""
    from torch.utils.data import DataLoader

    from ..data.image_dataset import ImageFolderDataset
    from ..data.image_folder import class_order

    if args.mean is None or args.std is None:
        raise CLIError("--image-size needs --mean and --std (the normalisation your model was trained with)")
    root = _folder(args.data, "--data")
    folder = root / "test" if (root / "test").is_dir() else root
    train = root / "train"
    classes = class_order([p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")]) \
        if train.is_dir() else None
    try:
        test = ImageFolderDataset(folder, size=args.image_size, mean=parse_floats(args.mean, "--mean"),
                                  std=parse_floats(args.std, "--std"), train=False, classes=classes)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return DataLoader(test, batch_size=batch_size, num_workers=min(4, os.cpu_count() or 1))


def _folder(path: str, flag: str) -> Path:
    """``path`` if it is a folder, else the folder its tarball unpacks into (once, in the cache folder)."""
    from ..data.extract import extracted_folder

    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        raise CLIError(f"{flag} {path!r} does not exist")
    try:
        return extracted_folder(p, announce=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as err:
        raise CLIError(f"{flag}: {err}") from None


def _roots(data: str, val_data: Optional[str]) -> tuple[Path, Path]:
    root = _folder(data, "--data")
    if val_data is not None:
        return root, _folder(val_data, "--val-data")
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise CLIError(f"--data {data!r} needs train/<class>/ and test/<class>/ folders (or pass --val-data)")
    return root / "train", root / "test"
