"""Pick a torch device without assuming a GPU exists."""
from __future__ import annotations

from typing import Optional, Union

import torch


def pick_device(preferred: Optional[Union[str, torch.device]] = None) -> torch.device:
    """Return ``preferred`` (validated) or CUDA when available, else CPU.

    ``preferred`` may be ``None``/``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """
    if preferred is None or preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {preferred!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {preferred!r} was asked for but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {preferred!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {preferred!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device
