"""CIFAR-10 data: readers (official python archive, image folders/tars) within read limits, cache, download,
device loader; ``adapter`` turns any user data (arrays, Dataset, DataLoader) into what the planner iterates."""
from .arrays import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR10Arrays
from .cache import default_cache_dir
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10, download_file, file_md5
from .limits import ReadLimits
from .load import load_cifar10, read_source
from .loader import TensorDataLoader, crop_and_flip
from .split import calibration_split

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10Arrays", "default_cache_dir", "CIFAR10_MD5",
    "CIFAR10_URL", "download_cifar10", "download_file", "file_md5", "ReadLimits", "load_cifar10", "read_source",
    "TensorDataLoader", "crop_and_flip", "calibration_split",
]
