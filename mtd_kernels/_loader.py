"""Loads the compiled extension ``mtd_kernels._C`` without ever failing an import."""
from __future__ import annotations

from types import ModuleType
from typing import Optional

_C: Optional[ModuleType] = None
_ERROR: Optional[str] = None


def load_extension() -> Optional[ModuleType]:
    """Import ``mtd_kernels._C`` (which registers the compiled kernels); None if unavailable."""
    global _C, _ERROR
    if _C is not None or _ERROR is not None:
        return _C
    try:
        from . import _C as ext  # noqa: WPS433

        _C = ext
    except ImportError as exc:  # not built, or built against another torch
        _ERROR = f"{type(exc).__name__}: {exc}"
    return _C


def extension_error() -> Optional[str]:
    """Why the extension did not load (None if it did)."""
    return _ERROR
