"""Size limits on what the data readers take in, so a hostile or mistaken source fails clearly.

A tarball of a million tiny files or one with a multi-GB member would otherwise be read into memory
whole (the readers hold every encoded image at once) and push the machine into swap. CIFAR-10 needs
~60,000 files and ~180 MB (the official archive unpacked; the JPEG image folder is ~20 MB), so the
defaults leave a wide margin while bounding memory to about a gigabyte.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_MEMBERS = 200_000  # archive members / folder entries (CIFAR-10 as images: 60,000 files + 22 folders)
MAX_BYTES = 1 << 30  # unpacked bytes of an archive's files, or of the files read from a folder
_DECODED_IMAGE_BYTES = 32 * 32 * 3 + 8  # one uint8 HWC image and its int64 label


@dataclass(frozen=True)
class ReadLimits:
    """``max_members``: files (and folders) a source may hold; ``max_bytes``: unpacked bytes read from it."""

    max_members: int = MAX_MEMBERS
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        for name in ("max_members", "max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ReadLimits.{name} must be a positive int, got {value!r}")

    @property
    def max_decoded_bytes(self) -> int:
        """Bytes of decoded arrays a source within these limits can give (bounds the decoded-data cache)."""
        return self.max_members * _DECODED_IMAGE_BYTES + (1 << 20)  # + class names and file headers


DEFAULT_LIMITS = ReadLimits()


class ReadBudget:
    """Counts members and bytes taken from one source; ValueError (naming it) once a limit is passed."""

    def __init__(self, where: str, limits: ReadLimits):
        self.where, self.limits = where, limits
        self.members = 0
        self.bytes = 0

    def take_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ValueError(f"{self.where}: more than {self.limits.max_members:,} files; not read (a CIFAR-style "
                             "source has ~60,000; pass limits=mtd.data.ReadLimits(max_members=...) to allow more)")

    def take_bytes(self, size: int, name: str) -> None:
        """Account ``size`` bytes of ``name`` (before they are read)."""
        self.bytes += size
        if self.bytes > self.limits.max_bytes:
            raise ValueError(f"{self.where}: more than {self.limits.max_bytes:,} bytes unpacked (reached at "
                             f"{name!r}, {size:,} bytes); not read (pass limits=mtd.data.ReadLimits(max_bytes=...) "
                             "to allow more)")
