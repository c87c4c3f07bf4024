"""Unpack an image tarball once into the cache folder, for the readers that decode on the fly (``--image-size``).

A compressed tar cannot be read in random order (a DataLoader wants image k of epoch e, and gzip must unpack
everything before it), so the images are written out once, in one streaming pass, to
``<cache>/extracted/<fingerprint of the tarball>/`` and read from there in later runs. The same care as the
in-memory readers (``mtd.data.archive``): member names that climb out of the archive are refused, links and
devices are skipped (only regular files are written), and the files and bytes written are capped — by default at
what the disk can take while keeping 1 GiB free, so a tarball of any size that fits on the disk unpacks. The
folder appears under its final name only when complete (written beside it and renamed), so an interrupted
extraction is started again, never used half-written.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from .archive import READ_ERRORS, iter_tar_files, unreadable
from .cache import default_cache_dir, source_fingerprint
from .limits import ReadLimits

KEEP_FREE_BYTES = 1 << 30  # disk left free by the default limit
MAX_EXTRACTED_FILES = 20_000_000  # ImageNet's training set is 1.28 million files


def disk_limits(folder: Path) -> ReadLimits:
    """Files and bytes an extraction into ``folder`` may write: the disk's free space less 1 GiB."""
    free = shutil.disk_usage(folder).free
    return ReadLimits(max_members=MAX_EXTRACTED_FILES, max_bytes=max(1, free - KEEP_FREE_BYTES))


def extracted_folder(tarball: os.PathLike, cache_dir: Optional[os.PathLike] = None,
                     limits: Optional[ReadLimits] = None, announce: Optional[Callable[[str], None]] = None) -> Path:
    """The folder holding ``tarball``'s regular files (unpacked now, or by an earlier call for the same file; a
    single top folder holding everything is stepped into). ValueError for an unreadable archive, a member outside
    it, or more than ``limits`` (default: the disk's free space less 1 GiB, up to 20 million files) to write.
    ``announce`` is told, once, where an extraction goes."""
    tarball = Path(tarball)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = root / "extracted" / source_fingerprint(tarball)
    if dest.is_dir():
        return _inside(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if announce is not None:
        announce(f"unpacking {tarball} once into {dest} (later runs read it from there)")
    limits = limits or disk_limits(dest.parent)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for member, src in iter_tar_files(tarball, limits):  # folders are made as files need them
            target = partial / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        os.replace(partial, dest)  # the folder appears complete or not at all
    except (ValueError, *READ_ERRORS) as err:
        shutil.rmtree(partial, ignore_errors=True)
        if dest.is_dir():  # another process finished the same extraction first
            return _inside(dest)
        if isinstance(err, ValueError):
            raise
        raise unreadable(tarball, err) from err
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return _inside(dest)


def _inside(folder: Path) -> Path:
    """``folder``, or its only entry when that is a folder (a tarball of ``name/train/...``)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in ("train", "test") \
        else folder
