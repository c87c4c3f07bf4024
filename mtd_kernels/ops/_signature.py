"""An op's Python signature, read from its schema: the one place argument names and defaults are written.

The schema string in each op's file (``SCHEMA``) is parsed by torch's own schema parser; from it come the
argument binding of the fake kernels, autograd and CUDA entries (``bind``) and the generated Python
functions ``mtd_kernels.<op>`` and ``mtd_kernels.reference.<op>_ref`` (``function``).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Dict

import torch


@functools.lru_cache(maxsize=None)
def signature(schema: str) -> inspect.Signature:
    """``inspect.Signature`` of ``schema`` ("name(Tensor input, ..., int[2] stride=1, ...) -> Tensor")."""
    params = []
    for arg in torch._C.parse_schema(f"mtd::{schema}").arguments:
        default = arg.default_value if arg.has_default_value() else inspect.Parameter.empty
        if isinstance(default, list) and len(set(default)) == 1:
            default = default[0]  # int[2] stride=1 is parsed as [1, 1]; both mean the same to the op
        params.append(inspect.Parameter(arg.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(params)


def bind(schema: str, args, kwargs=None) -> Dict[str, object]:
    """{argument name: value} of one call, defaults filled in (the dispatcher passes trailing ones by keyword)."""
    bound = signature(schema).bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    return dict(bound.arguments)


def function(schema: str, impl: Callable, name: str, doc: str) -> Callable:
    """A Python function with the schema's signature that calls ``impl`` with every argument positionally."""
    sig = signature(schema)

    def fn(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return impl(*bound.arguments.values())

    fn.__name__ = fn.__qualname__ = name
    fn.__signature__ = sig
    fn.__doc__ = doc
    return fn
