"""Decode encoded images (JPEG/PNG/...) into one uint8 array, optionally in a small process pool."""
from __future__ import annotations

import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..utils.progress import progress_bar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_CHUNK = 2000  # images per pool task: large enough to amortise pickling, small enough for a smooth bar


def decode_one(name: str, data: bytes, size: Tuple[int, int] = (32, 32)) -> np.ndarray:
    """Decode one image to ``(H, W, 3)`` uint8 RGB; ValueError naming ``name`` if unreadable or of wrong size."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only: the size is known undecoded
            if image.size != size:  # checked first, so a small file claiming a huge image is never decoded
                raise ValueError(f"image {name!r} is {image.size[0]}x{image.size[1]} pixels; "
                                 f"expected {size[0]}x{size[1]} (CIFAR-sized images)")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot decode image {name!r}: {err}") from err


def _decode_chunk(items: Sequence[Tuple[str, bytes]]) -> np.ndarray:
    return np.stack([decode_one(name, data) for name, data in items]) if items else np.zeros((0, 32, 32, 3), np.uint8)


def decode_images(items: Sequence[Tuple[str, bytes]], *, workers: Optional[int] = None,
                  progress: bool = True, desc: str = "decoding") -> np.ndarray:
    """Decode ``(name, bytes)`` pairs in order into an ``(N, 32, 32, 3)`` uint8 array.

    ``workers=None`` uses 2 processes for large sets when the machine has a core to spare (on 2 busy
    cores the pool measured no faster than one process: 6.1 s vs 5.4 s for 60k JPEGs), else 1.
    """
    if workers is None:
        spare_cores = max(1, multiprocessing.cpu_count() - 1)
        workers = min(2, spare_cores) if len(items) >= 4 * _CHUNK else 1
    chunks: List[Sequence[Tuple[str, bytes]]] = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    out = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    bar = progress_bar(total=len(items), desc=desc, enabled=progress, unit="img")
    start = 0
    with bar:
        if workers <= 1:
            results = map(_decode_chunk, chunks)
            for decoded in results:
                out[start:start + len(decoded)] = decoded
                start += len(decoded)
                bar.update(len(decoded))
        else:
            # fork: the children only run PIL, and avoid re-importing torch (spawn would cost seconds).
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                for decoded in pool.map(_decode_chunk, chunks):
                    out[start:start + len(decoded)] = decoded
                    start += len(decoded)
                    bar.update(len(decoded))
    return out
