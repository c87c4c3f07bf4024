"""Channel-width scaling shared by the models."""
from __future__ import annotations


def scaled_channels(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1."""
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    return max(1, int(round(channels * width)))


def check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
