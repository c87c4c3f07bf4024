"""Temporarily swap modules of a model by dotted name (restored on exit, even on error)."""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

from torch import nn

from ..layers.surgery import get_module, replace_module


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """The module at dotted path ``name`` (ValueError naming the path if it does not exist)."""
    try:
        return get_module(model, name)
    except KeyError as err:
        raise ValueError(f"model has no layer named {name!r} ({err.args[0]})") from None


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the module at ``name`` by ``new``; returns the old one."""
    get_submodule(model, name)  # readable error first
    return replace_module(model, name, new)


@contextlib.contextmanager
def swapped(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Context manager: ``model`` with the given layers replaced, originals put back afterwards."""
    originals = {}
    try:
        for name, new in replacements.items():
            originals[name] = set_submodule(model, name, new)
        yield model
    finally:
        for name, old in originals.items():
            set_submodule(model, name, old)
