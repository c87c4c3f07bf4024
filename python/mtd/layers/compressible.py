"""Which layers mtd can decompose: the one predicate used by the layer constructors, the planner and
``apply_plan``.

Supported: ``nn.Conv2d`` with ``groups=1`` and zero padding (CP / CP4 / Tucker-2; on a 1x1 conv CP is a
low-rank factorisation of its matrix), and ``nn.Linear`` (SVD). Which method takes which layer type is
:mod:`mtd.methods`' table, and :func:`mtd.methods.check_compressible` checks a layer for one method; this module
never imports the table (the table imports the layer classes). Layers that are already decomposed (and everything inside them, such as a Tucker
core, which is itself an ungrouped kxk conv) are never candidates.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ._factorized import FactorizedModule


class UnsupportedLayerError(ValueError):
    """A layer that mtd cannot decompose (with the requested method)."""


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot be decomposed by any method, or ``None`` if it can."""
    if isinstance(module, FactorizedModule):
        return f"it is already decomposed ({type(module).__name__})"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"it is a grouped conv (groups={module.groups}); only groups=1 is supported"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}; only 'zeros' is supported"
        return None
    if isinstance(module, nn.Linear):
        return None
    return f"it is a {type(module).__name__}; mtd decomposes nn.Conv2d and nn.Linear layers"


def is_compressible(module: nn.Module) -> bool:
    """True if ``module`` can be decomposed (by the methods of its layer type)."""
    return unsupported_reason(module) is None


def check_compressible(module: nn.Module, name: Optional[str] = None) -> None:
    """Raise :class:`UnsupportedLayerError` (a ValueError) naming the layer and the reason."""
    raise_unsupported(unsupported_reason(module), module, None, name)


def raise_unsupported(reason: Optional[str], module: nn.Module, method: Optional[str], name: Optional[str]) -> None:
    """Raise :class:`UnsupportedLayerError` for ``reason`` (nothing if it is ``None``), naming the layer and method."""
    if reason is not None:
        what = f"layer {name!r} ({type(module).__name__})" if name is not None else type(module).__name__
        raise UnsupportedLayerError(f"{what} cannot be decomposed{f' by {method!r}' if method else ''}: {reason}")


def check_conv_for(conv: nn.Module, method: str) -> None:
    """A conv layer constructor's check: TypeError unless ``conv`` is an nn.Conv2d, then
    :class:`UnsupportedLayerError` naming ``method`` if it cannot be decomposed."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    raise_unsupported(unsupported_reason(conv), conv, method, None)
