"""Registers one chain op: schema, fake kernel, autograd, CUDA entry, and the CPU fallback."""
from __future__ import annotations

import warnings
from typing import Callable, List, Optional, Sequence

import torch

from ._chain import Stage, chain_backward, empty_output, reference_forward
from ._library import LIB

# name -> (build_stages(args) -> stages, check(args)) ; filled by the op files
OPS: dict = {}

_warned_fallback = False


def _warn_fallback_once() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        from .._loader import extension_error

        warnings.warn(
            "mtd: the compiled extension mtd_kernels._C is not available "
            f"({extension_error()}); torch.ops.mtd.* run their pure-PyTorch implementation on CPU, "
            "which is correct but not fused. Reinstall with `pip install .` to build it.",
            RuntimeWarning,
            stacklevel=3,
        )


def register_chain_op(
    name: str,
    schema: str,
    n_weights: int,
    build_stages: Callable[..., List[Stage]],
    check: Callable[..., None],
) -> None:
    """Define ``mtd::<name>`` and register everything but the compiled CPU/CUDA kernels.

    The op's arguments are ``(input, *weights[n_weights], bias, stride, padding, dilation, relu)``;
    ``build_stages(weights, stride, padding, dilation)`` gives its chain, ``check(...)`` raises a
    clear error for bad arguments.
    """
    LIB.define(schema)
    qualname = f"mtd::{name}"

    def split(args, kwargs=None):
        # The dispatcher may leave out trailing arguments equal to their default (relu=False) or
        # pass them by keyword when it calls a Python kernel.
        x = args[0]
        weights = list(args[1 : 1 + n_weights])
        bias, stride, padding, dilation = args[1 + n_weights : 5 + n_weights]
        rest = args[5 + n_weights :]
        relu = rest[0] if rest else (kwargs or {}).get("relu", False)
        return x, weights, bias, list(stride), list(padding), list(dilation), bool(relu)

    def stages_of(args, kwargs=None) -> tuple:
        x, weights, bias, stride, padding, dilation, relu = split(args, kwargs)
        check(x, weights, bias, stride, padding, dilation)
        return x, build_stages(weights, stride, padding, dilation), bias, relu

    def reference(*args, **kwargs):
        x, stages, bias, relu = stages_of(args, kwargs)
        return reference_forward(x, stages, bias, relu)

    @torch.library.register_fake(qualname)
    def _fake(*args, **kwargs):
        x, stages, _, _ = stages_of(args, kwargs)
        return empty_output(x, stages)

    def setup_context(ctx, inputs, output):
        x, weights, bias, stride, padding, dilation, relu = split(inputs)
        ctx.geometry = (stride, padding, dilation)
        ctx.relu = relu
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, *weights, output if relu else None)

    def backward(ctx, grad):
        x, *weights, out = ctx.saved_tensors
        stages = build_stages(weights, *ctx.geometry)
        if ctx.relu:
            grad = grad * (out > 0).to(grad.dtype)
        needs = ctx.needs_input_grad
        grad_x, grad_ws = chain_backward(x, stages, grad, [needs[0], *needs[1 : 1 + n_weights]])
        grad_b = grad.sum(dim=(0, 2, 3)) if ctx.has_bias and needs[1 + n_weights] else None
        return (grad_x, *grad_ws, grad_b, None, None, None, None)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)

    @torch.library.impl(qualname, "CUDA", lib=LIB)
    def _cuda(*args, **kwargs):
        from ..dispatch import cuda_kernel

        kernel = cuda_kernel(name)
        if kernel is None:
            return reference(*args, **kwargs)
        x, weights, bias, stride, padding, dilation, relu = split(args, kwargs)
        return kernel(x, *weights, bias, stride, padding, dilation, relu)

    OPS[name] = {"reference": reference, "n_weights": n_weights, "build_stages": build_stages}


def register_cpu_fallbacks() -> None:
    """Without the compiled extension, CPU calls run the reference chain (warning once)."""
    for name, entry in OPS.items():
        ref = entry["reference"]

        def _cpu(*args, _ref=ref, **kwargs):
            _warn_fallback_once()
            return _ref(*args, **kwargs)

        LIB.impl(name, _cpu, "CPU")
