"""Normalising conv geometry (kernel, stride, padding incl. 'same'/'valid', dilation) and checks."""
from __future__ import annotations

from typing import Tuple, Union

Pair = Tuple[int, int]
Padding = Union[Pair, str]  # a pair of ints, or 'same'
BACKENDS = ("fused", "torch")


def to_pair(value, name: str, minimum: int) -> Pair:
    """An int or a 1/2-sequence of ints -> a pair of ints >= ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        out = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        out = (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def to_padding(padding, stride: Pair) -> Padding:
    """Padding as a pair of ints, or 'same' ('valid' is (0, 0)); 'same' needs stride 1 like nn.Conv2d."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' is not supported with stride {stride} (same as nn.Conv2d); use ints")
        return "same"
    return to_pair(padding, "padding", 0)


def same_padding(kernel: Pair, dilation: Pair) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) for 'same', extra row/column at the bottom/right like nn.Conv2d."""
    total_h, total_w = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
    return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend
