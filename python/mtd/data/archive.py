"""Read the wanted files of a .tar / .tar.gz / .tar.bz2 / .tar.xz in one streaming pass, within limits.

Nothing is extracted to disk. The decompressed stream itself is capped (headers, skipped members and
all), so a compression bomb stops at the cap instead of filling memory or spinning for hours; member
names that climb out of the archive (``..``, absolute paths) are refused.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, Tuple

from .limits import DEFAULT_LIMITS, ReadBudget, ReadLimits

_TAR_OVERHEAD = 1024  # bytes of header and padding a tar stores per member, at most without long names


class _CappedReader(io.RawIOBase):
    """A read-only stream that raises ValueError once more than ``cap`` bytes have been read through it."""

    def __init__(self, inner: BinaryIO, cap: int, where: str):
        self.inner, self.cap, self.where, self.read_so_far = inner, cap, where, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        self.read_so_far += len(data)
        if self.read_so_far > self.cap:
            raise ValueError(f"{self.where}: unpacks to more than {self.cap:,} bytes; not read (pass "
                             "limits=mtd.data.ReadLimits(max_bytes=...) to allow more)")
        buffer[:len(data)] = data
        return len(data)


def _decompressed(path: Path) -> BinaryIO:
    """The tar stream inside ``path``: gzip, bzip2 and xz are recognised by their magic bytes."""
    with open(path, "rb") as probe:
        magic = probe.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _check_name(name: str, where: str) -> None:
    if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"{where}: member {name!r} points outside the archive (absolute or '..'); refusing "
                         "to read an archive with such names")


# What a damaged archive raises while it is read (also while a yielded member's file is read: catch these there)
READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def unreadable(path: Path, err: BaseException) -> ValueError:
    return ValueError(f"{str(path)!r} is not a readable .tar/.tar.gz archive ({type(err).__name__}: {err}); "
                      "expected the official cifar-10-python.tar.gz or a tar of train/<class>/ and test/<class>/ "
                      "image folders")


def iter_tar_files(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Tuple[tarfile.TarInfo, BinaryIO]]:
    """(member, its open file) for every regular file of the archive, in one streaming pass; links, devices and
    folders are skipped. ValueError for an unreadable archive, a member name outside it, or a source over
    ``limits``: more than ``max_members`` members, or more than ``max_bytes`` in its files (counted from each
    header before a byte of the member is read)."""
    where = str(path)
    budget = ReadBudget(where, limits)
    try:
        cap = limits.max_bytes + _TAR_OVERHEAD * limits.max_members
        with _decompressed(path) as raw, tarfile.open(fileobj=io.BufferedReader(_CappedReader(raw, cap, where)),
                                                       mode="r|") as archive:
            for member in archive:
                budget.take_member()
                if not member.isfile():
                    continue
                _check_name(member.name, where)
                budget.take_bytes(member.size, member.name)
                yield member, archive.extractfile(member)
    except READ_ERRORS as err:
        raise unreadable(path, err) from err


def read_tar_members(path: Path, wanted: Callable[[str], bool],
                     limits: ReadLimits = DEFAULT_LIMITS) -> Dict[str, bytes]:
    """``{member path: bytes}`` of the regular files for which ``wanted(path)`` holds (the rest are skipped
    unread); the errors of :func:`iter_tar_files`."""
    try:
        return {member.name: data.read(member.size) for member, data in iter_tar_files(path, limits)
                if wanted(member.name)}
    except READ_ERRORS as err:  # raised while a member was read
        raise unreadable(path, err) from err
