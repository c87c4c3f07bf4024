"""``load_cifar10``: find the source format, decode once, and cache the arrays."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .archive import read_tar_members
from .arrays import CIFAR10Arrays
from .cache import cache_path, load_cached, save_cached
from .download import CIFAR10_ARCHIVE_NAME, download_cifar10
from .image_folder import arrays_from_entries, entries_from_folder, entries_from_members, image_member
from .limits import DEFAULT_LIMITS, ReadLimits
from .official import is_official_listing, is_official_member, read_official_dir, read_official_members

PathLike = Union[str, os.PathLike]
OFFICIAL_DIR_NAME = "cifar-10-batches-py"


def load_cifar10(source: PathLike, *, cache_dir: Optional[PathLike] = None, download: bool = False,
                 use_cache: bool = True, workers: Optional[int] = None, progress: bool = True,
                 limits: ReadLimits = DEFAULT_LIMITS) -> CIFAR10Arrays:
    """Load CIFAR-10-style data as uint8 arrays.

    ``source`` may be the official ``cifar-10-python.tar.gz``, its extracted ``cifar-10-batches-py/``
    folder (or a folder holding either), an image-folder tree ``train/<class>/*``, ``test/<class>/*``,
    or a ``.tar``/``.tar.gz`` of one. With ``download=True`` a missing source is fetched from the
    official site (``source`` is then the archive path or the folder to put it in).
    Decoded arrays are cached in ``cache_dir`` (default ``$MTD_CACHE_DIR`` or ``~/.cache/mtd``).
    ``limits`` bounds the files and bytes read from the source (:class:`~mtd.data.ReadLimits`); a source
    over them, an archive member named outside it or a batch that is not plain data is a ValueError.
    """
    path = Path(source).expanduser()
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"CIFAR-10 source {str(path)!r} does not exist (pass download=True to fetch "
                                    "the official archive)")
        path = download_cifar10(path, progress=progress)
    path = _resolve_folder(path)
    cache_file = cache_path(path, cache_dir) if use_cache else None
    if cache_file is not None:
        cached = load_cached(cache_file, limits)
        if cached is not None:
            return cached
    arrays = read_source(path, workers=workers, progress=progress, limits=limits)
    if cache_file is not None:
        save_cached(cache_file, arrays)
    return arrays


def _resolve_folder(path: Path) -> Path:
    """A folder that merely contains the official archive or batches folder stands for that."""
    if path.is_dir():
        for name in (OFFICIAL_DIR_NAME, CIFAR10_ARCHIVE_NAME):
            if (path / name).exists() and not (path / "train").is_dir():
                return path / name
    return path


def read_source(path: Path, *, workers: Optional[int] = None, progress: bool = True,
                limits: ReadLimits = DEFAULT_LIMITS) -> CIFAR10Arrays:
    """Decode ``path`` without any caching."""
    if path.is_dir():
        if (path / "data_batch_1").is_file():
            return read_official_dir(path, limits)
        if not (path / "train").is_dir() or not (path / "test").is_dir():
            raise ValueError(f"{str(path)!r} is neither an image folder (train/<class>/, test/<class>/) nor a "
                             "cifar-10-batches-py folder (data_batch_1..5, test_batch, batches.meta)")
        return arrays_from_entries(entries_from_folder(path, limits), str(path), workers=workers,
                                   progress=progress)
    members = read_tar_members(path, _wanted_member, limits)
    if is_official_listing(members):
        return read_official_members(members, str(path))
    return arrays_from_entries(entries_from_members(members, str(path)), str(path), workers=workers,
                               progress=progress)


def _wanted_member(name: str) -> bool:
    """An archive member either reader could use: a batch of the official release or a split/class image."""
    return is_official_member(name) or image_member(name) is not None
