"""Reader for the official CIFAR-10 python release (``cifar-10-python.tar.gz`` / ``cifar-10-batches-py/``).

Each batch is a pickled dict with ``b"data"`` — ``(N, 3072)`` uint8, row-major ``(3, 32, 32)`` per
row — and ``b"labels"``; ``batches.meta`` holds ``b"label_names"``. They are read with a restricted
unpickler (:mod:`.safe_pickle`): a batch that names any other global is refused, never run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np

from .arrays import CIFAR10Arrays
from .limits import DEFAULT_LIMITS, ReadBudget, ReadLimits
from .safe_pickle import restricted_loads

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"


def _unpickle(name: str, data: bytes, where: str) -> dict:
    try:
        batch = restricted_loads(data)  # the release was pickled by Python 2: its strings come back as bytes
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt or hostile batch
        raise ValueError(f"{where}: CIFAR-10 batch {name!r} is corrupt, not a pickle or not a plain batch: "
                         f"{err}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: CIFAR-10 batch {name!r} is not a dict")
    return batch


def _get(batch: dict, key: str, name: str):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise ValueError(f"CIFAR-10 batch {name!r} has no {key!r} entry")


def _read_batch(name: str, data: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(name, data, where)
    pixels = _get(batch, "data", name)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
            or pixels.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR-10 batch {name!r}: data must be a uint8 (N, 3072) array, got "
                         f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', '')}")
    labels = _get(batch, "labels", name)
    if not isinstance(labels, list) or not all(type(y) is int and 0 <= y < 2 ** 31 for y in labels):
        raise ValueError(f"CIFAR-10 batch {name!r}: labels must be a list of non-negative ints")
    if len(labels) != pixels.shape[0]:
        raise ValueError(f"CIFAR-10 batch {name!r}: {len(labels)} labels for {pixels.shape[0]} images")
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3, 32, 32) CHW -> (N, 32, 32, 3)
    return np.ascontiguousarray(images), np.array(labels, dtype=np.int64)


def _class_names(meta: dict) -> Tuple[str, ...]:
    names = _get(meta, "label_names", META)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"CIFAR-10 file {META!r}: label_names must be a list of strings")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def read_official(get_file: Callable[[str], bytes], where: str) -> CIFAR10Arrays:
    """Read the batches through ``get_file(name) -> bytes`` (``where`` names the source in errors)."""
    def fetch(name: str) -> bytes:
        try:
            return get_file(name)
        except (KeyError, FileNotFoundError) as err:
            raise ValueError(f"{where}: missing CIFAR-10 file {name!r} (expected {', '.join(TRAIN_BATCHES)}, "
                             f"{TEST_BATCH}, {META})") from err

    train = [_read_batch(name, fetch(name), where) for name in TRAIN_BATCHES]
    test_x, test_y = _read_batch(TEST_BATCH, fetch(TEST_BATCH), where)
    meta = _unpickle(META, fetch(META), where)
    classes = _class_names(meta)
    return CIFAR10Arrays(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                         test_x, test_y, classes)


def read_official_dir(folder: Path, limits: ReadLimits = DEFAULT_LIMITS) -> CIFAR10Arrays:
    """Read an extracted ``cifar-10-batches-py`` folder (its files within ``limits.max_bytes``)."""
    budget = ReadBudget(str(folder), limits)

    def read(name: str) -> bytes:
        path = folder / name
        budget.take_bytes(path.stat().st_size, name)
        return path.read_bytes()

    return read_official(read, str(folder))


def read_official_members(members: Dict[str, bytes], where: str) -> CIFAR10Arrays:
    """Read from an archive's ``{member path: bytes}``; batches are matched by file name."""
    by_name = {path.rsplit("/", 1)[-1]: data for path, data in members.items()}
    return read_official(lambda name: by_name[name], where)


def is_official_member(path: str) -> bool:
    """True for an archive member that is one of the release's batch files (matched by file name)."""
    return path.rsplit("/", 1)[-1] in (*TRAIN_BATCHES, TEST_BATCH, META)


def is_official_listing(paths) -> bool:
    """True when the file names look like the official release (a ``data_batch_1`` is present)."""
    return any(str(p).rsplit("/", 1)[-1] == "data_batch_1" for p in paths)
