"""On-disk cache of decoded arrays (.npz), keyed by the source's path, sizes and mtimes.

A changed source gives a new key (so it is decoded again); a corrupt cache file is ignored and
rebuilt; writes are atomic so a killed process never leaves a half-written cache behind.
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

CACHE_VERSION = 1
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


def load_cached(path: Path) -> Optional[CIFAR10Arrays]:
    """The cached arrays, or None if the file is absent or unreadable (a warning says so)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
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
            np.savez(handle, train_x=arrays.train_x, train_y=arrays.train_y, test_x=arrays.test_x,
                     test_y=arrays.test_y, classes=np.array(arrays.classes, dtype=str))
    except OSError as err:
        warnings.warn(f"could not write data cache {path}: {err}", stacklevel=3)
