"""Download a file with a checksum check and an atomic write (no partial file is ever left behind)."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Optional, Union

from ..utils.atomic import atomic_write
from ..utils.progress import progress_bar

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE_NAME = "cifar-10-python.tar.gz"


def file_md5(path: Union[str, os.PathLike], chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: Union[str, os.PathLike], *, md5: Optional[str] = None, progress: bool = True,
                  timeout: float = 60.0, chunk_size: int = 1 << 20) -> Path:
    """Stream ``url`` to ``dest``; ValueError (and nothing written) if the md5 does not match."""
    dest = Path(dest)
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_write(dest, "wb") as out:
        total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        with progress_bar(total=int(total) if total else None, desc=f"downloading {dest.name}",
                          enabled=progress, unit="B") as bar:
            for block in iter(lambda: response.read(chunk_size), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
        if md5 is not None and digest.hexdigest() != md5.lower():
            # Raising inside atomic_write discards the temporary file: dest is never half-valid.
            raise ValueError(f"download of {url} has md5 {digest.hexdigest()}, expected {md5}; "
                             "the file was not saved")
    return dest


def download_cifar10(dest: Union[str, os.PathLike], *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     progress: bool = True) -> Path:
    """Fetch the official archive to ``dest`` (a ``.tar.gz`` path or a folder); reuse a valid existing copy."""
    dest = Path(dest)
    if not str(dest).endswith((".tar.gz", ".tgz")):
        dest = dest / CIFAR10_ARCHIVE_NAME
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    return download_file(url, dest, md5=md5, progress=progress)
