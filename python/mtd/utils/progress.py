"""A thin tqdm wrapper so every progress bar in mtd looks and switches off the same way."""
from __future__ import annotations

from typing import Iterable, Optional

from tqdm.auto import tqdm


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 enabled: bool = True, unit: str = "it", leave: bool = False) -> tqdm:
    """Return a tqdm bar over ``iterable`` (or a manual bar when it is None); ``enabled=False`` hides it."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=leave,
                dynamic_ncols=True, mininterval=0.5)
