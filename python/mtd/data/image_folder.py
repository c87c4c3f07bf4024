"""Reader for an image-folder tree ``train/<class>/*.jpg``, ``test/<class>/*.jpg`` (folder or tar).

Labels follow the CIFAR-10 order when the class folders are exactly the CIFAR-10 classes, and
sorted class names otherwise (as torchvision's ImageFolder does).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .arrays import CIFAR10_CLASSES, CIFAR10Arrays
from .decode import IMAGE_EXTENSIONS, decode_images
from .limits import DEFAULT_LIMITS, ReadBudget, ReadLimits

SPLITS = ("train", "test")
# (split, class name, display name, encoded bytes)
Entry = Tuple[str, str, str, bytes]


def class_order(names: Sequence[str]) -> Tuple[str, ...]:
    """CIFAR-10 order for the CIFAR-10 class set, alphabetical for any other set."""
    if set(names) == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(sorted(set(names)))


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def image_member(path: str) -> Optional[Tuple[str, str]]:
    """``(split, class)`` of an archive member ``[prefix/]split/class/image``, or None for anything else."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if len(parts) == 4 and parts[1] in SPLITS:  # one top-level folder around train/ and test/
        parts = parts[1:]
    if len(parts) == 3 and parts[0] in SPLITS and _is_image(parts[2]):
        return parts[0], parts[1]
    return None


def entries_from_members(members: Dict[str, bytes], where: str) -> List[Entry]:
    """Pick ``[prefix/]split/class/file`` images out of an archive's ``{path: bytes}``."""
    entries: List[Entry] = []
    for path, data in members.items():
        found = image_member(path)
        if found is not None:
            entries.append((*found, f"{where}:{path}", data))
    return entries


def _listing(folder: Path, budget: ReadBudget) -> List[str]:
    """Sorted file names of ``folder``, counted as they are listed (a huge folder stops at the limit)."""
    names = []
    with os.scandir(folder) as listing:
        for entry in listing:
            budget.take_member()
            names.append(entry.name)
    return sorted(names)


def entries_from_folder(root: Path, limits: ReadLimits = DEFAULT_LIMITS) -> List[Entry]:
    """Read every ``root/split/class/image`` file's bytes (within ``limits``; other files are not read)."""
    budget = ReadBudget(str(root), limits)
    entries: List[Entry] = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for file in _listing(class_dir, budget):
                path = class_dir / file
                if _is_image(file) and path.is_file():
                    budget.take_bytes(path.stat().st_size, str(path))
                    entries.append((split, class_dir.name, str(path), path.read_bytes()))
    return entries


def arrays_from_entries(entries: List[Entry], where: str, *, workers: Optional[int] = None,
                        progress: bool = True) -> CIFAR10Arrays:
    """Decode and label the entries; ValueError if a split or class is missing."""
    present = {split for split, *_ in entries}
    missing = [s for s in SPLITS if s not in present]
    if missing:
        raise ValueError(f"{where}: no images under {' or '.join(f'{s}/<class>/' for s in missing)}; an image "
                         "folder needs train/<class>/*.jpg and test/<class>/*.jpg (or the official "
                         "cifar-10-python archive)")
    train_classes = {cls for split, cls, *_ in entries if split == "train"}
    extra_test = sorted({cls for split, cls, *_ in entries if split == "test"} - train_classes)
    if extra_test:
        raise ValueError(f"{where}: test classes {extra_test} have no training images")
    classes = class_order(sorted(train_classes))
    label_of = {name: i for i, name in enumerate(classes)}
    # Deterministic order: by split, then label, then file name.
    entries = sorted(entries, key=lambda e: (e[0], label_of[e[1]], e[2]))
    out = {}
    for split in SPLITS:
        chosen = [e for e in entries if e[0] == split]
        images = decode_images([(name, data) for _, _, name, data in chosen], workers=workers,
                               progress=progress, desc=f"decoding {split}")
        labels = np.array([label_of[cls] for _, cls, _, _ in chosen], dtype=np.int64)
        out[split] = (images, labels)
    return CIFAR10Arrays(out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes)
