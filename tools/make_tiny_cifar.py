"""Write a small CIFAR-10-like image-folder tarball (``train/<class>/N.png``, ``test/<class>/N.png``, 32x32).

Each class has its own mean colour plus noise, so a network learns it in one epoch; the CI's fresh-venv
check and the tests use it instead of the real data set (which CI may not have).

    python tools/make_tiny_cifar.py out.tar.gz [--train-per-class 60] [--test-per-class 20]
"""
from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_tiny_cifar_tar(path: Path, train_per_class: int, test_per_class: int, seed: int = 0,
                         noise: float = 40.0) -> Path:
    """A .tar.gz of class-coloured 32x32 PNGs; returns ``path``."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            for label, name in enumerate(CLASSES):
                base = np.array([25 * label, 255 - 25 * label, (70 * label) % 256], dtype=np.float64)
                for i in range(n):
                    img = np.clip(base + rng.normal(0, noise, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--train-per-class", type=int, default=60)
    parser.add_argument("--test-per-class", type=int, default=20)
    args = parser.parse_args()
    write_tiny_cifar_tar(Path(args.out), args.train_per_class, args.test_per_class)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
