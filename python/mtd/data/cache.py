"""On-disk cache of decoded arrays (.npz), keyed by the source's path, sizes and mtimes.

A changed source gives a new key (so it is decoded again); a corrupt or foreign cache file (unreadable,
pickled objects, the wrong arrays, another key inside, or larger than any source within the read limits
could give) is ignored with a warning and rebuilt; writes are atomic so a killed process never leaves a
half-written cache behind.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..utils.atomic import atomic_write
from .arrays import CIFAR10Arrays
from .limits import DEFAULT_LIMITS, ReadLimits

CACHE_VERSION = 2  # 2: the file holds its own key
PathLike = Union[str, os.PathLike]


def default_cache_dir() -> Path:
    """``$MTD_CACHE_DIR`` or ``~/.cache/mtd``."""
    env = os.environ.get("MTD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mtd"


def source_fingerprint(source: PathLike) -> str:
    """Hash of the source's real path plus (relative path, size, mtime) of every file in it."""
    source = Path(source).resolve()
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{source}".encode())
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        rel = file.relative_to(source) if file != source else Path(".")
        digest.update(f"|{rel}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def cache_path(source: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the decoded arrays of ``source`` are (or would be) cached."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"cifar-{source_fingerprint(source)}.npz"


def _key_of(path: Path) -> str:
    return path.stem.removeprefix("cifar-")


def load_cached(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Optional[CIFAR10Arrays]:
    """The cached arrays, or None if the file is absent, unreadable or foreign (a warning says so)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            unpacked = sum(info.file_size for info in data.zip.infolist())
            if unpacked > limits.max_decoded_bytes:  # checked before any array is read into memory
                raise ValueError(f"{unpacked:,} bytes unpacked, more than a source within the read limits gives")
            key = str(data["key"]) if "key" in data.files else None
            if key != _key_of(path):
                raise ValueError(f"written for key {key!r}, not for this file's {_key_of(path)!r}")
            return CIFAR10Arrays(data["train_x"], data["train_y"], data["test_x"], data["test_y"],
                                 tuple(str(c) for c in data["classes"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring corrupt data cache {path} ({type(err).__name__}: {err}); decoding again",
                      stacklevel=3)
        return None


def save_cached(path: Path, arrays: CIFAR10Arrays) -> None:
    """Write the arrays atomically; a cache folder that cannot be written only gives a warning."""
    try:
        with atomic_write(path, "wb") as handle:
            np.savez(handle, key=np.array(_key_of(path)), train_x=arrays.train_x, train_y=arrays.train_y,
                     test_x=arrays.test_x, test_y=arrays.test_y, classes=np.array(arrays.classes, dtype=str))
    except OSError as err:
        warnings.warn(f"could not write data cache {path}: {err}", stacklevel=3)
