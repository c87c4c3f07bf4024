"""``load_cifar10``: find the source format, decode once, and cache the arrays."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Dict, Optional, Union

from .arrays import CIFAR10Arrays
from .cache import cache_path, load_cached, save_cached
from .download import CIFAR10_ARCHIVE_NAME, download_cifar10
from .image_folder import arrays_from_entries, entries_from_folder, entries_from_members
from .official import is_official_listing, read_official_dir, read_official_members

PathLike = Union[str, os.PathLike]
OFFICIAL_DIR_NAME = "cifar-10-batches-py"


def load_cifar10(source: PathLike, *, cache_dir: Optional[PathLike] = None, download: bool = False,
                 use_cache: bool = True, workers: Optional[int] = None, progress: bool = True) -> CIFAR10Arrays:
    """Load CIFAR-10-style data as uint8 arrays.

    ``source`` may be the official ``cifar-10-python.tar.gz``, its extracted ``cifar-10-batches-py/``
    folder (or a folder holding either), an image-folder tree ``train/<class>/*``, ``test/<class>/*``,
    or a ``.tar``/``.tar.gz`` of one. With ``download=True`` a missing source is fetched from the
    official site (``source`` is then the archive path or the folder to put it in).
    Decoded arrays are cached in ``cache_dir`` (default ``$MTD_CACHE_DIR`` or ``~/.cache/mtd``).
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
        cached = load_cached(cache_file)
        if cached is not None:
            return cached
    arrays = read_source(path, workers=workers, progress=progress)
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


def read_source(path: Path, *, workers: Optional[int] = None, progress: bool = True) -> CIFAR10Arrays:
    """Decode ``path`` without any caching."""
    if path.is_dir():
        if (path / "data_batch_1").is_file():
            return read_official_dir(path)
        if not (path / "train").is_dir() or not (path / "test").is_dir():
            raise ValueError(f"{str(path)!r} is neither an image folder (train/<class>/, test/<class>/) nor a "
                             "cifar-10-batches-py folder (data_batch_1..5, test_batch, batches.meta)")
        return arrays_from_entries(entries_from_folder(path), str(path), workers=workers, progress=progress)
    members = read_tar_members(path)
    if is_official_listing(members):
        return read_official_members(members, str(path))
    return arrays_from_entries(entries_from_members(members, str(path)), str(path), workers=workers,
                               progress=progress)


def read_tar_members(path: Path) -> Dict[str, bytes]:
    """``{member path: bytes}`` for every regular file in a .tar/.tar.gz (read in one streaming pass)."""
    try:
        with tarfile.open(path, "r|*") as archive:
            return {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable .tar/.tar.gz archive ({type(err).__name__}: {err}); "
                         "expected the official cifar-10-python.tar.gz or a tar of train/<class>/ and "
                         "test/<class>/ image folders") from err
