"""Registers every op of :data:`mtd_kernels.ops.SPECS`: schema, fake kernel, autograd, CUDA entry,
and (without the compiled extension) the CPU fallback.  The compiled CPU kernels register
themselves from C++ (``TORCH_LIBRARY_IMPL(mtd, CPU, m)``) when ``mtd_kernels._C`` is imported.
"""
from __future__ import annotations

import warnings

import torch

from ._library import LIB
from ._loader import extension_error
from .dispatch import cuda_kernel
from .ops import SPECS, OpSpec
from .ops._chain import chain_backward, empty_output, reference_forward

_warned_fallback = False


def _warn_fallback_once() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "mtd: the compiled extension mtd_kernels._C is not available "
            f"({extension_error()}); torch.ops.mtd.* run their pure-PyTorch implementation on CPU, "
            "which is correct but not fused. Reinstall with `pip install .` to build it.",
            RuntimeWarning,
            stacklevel=3,
        )


def _register(spec: OpSpec) -> None:
    LIB.define(spec.schema)
    qualname = f"mtd::{spec.name}"
    n = spec.n_weights

    @torch.library.register_fake(qualname)
    def _fake(*args, **kwargs):
        call = spec.parse(args, kwargs)
        spec.validate(call)
        return empty_output(call.x, spec.stages(call))

    def setup_context(ctx, inputs, output):
        call = spec.parse(inputs)
        ctx.geometry = (call.stride, call.padding, call.dilation)
        ctx.relu = call.relu
        ctx.has_bias = call.bias is not None
        ctx.save_for_backward(call.x, *call.weights, output if call.relu else None)

    def backward(ctx, grad):
        x, *weights, out = ctx.saved_tensors
        stages = spec.build_stages(weights, *ctx.geometry)
        if ctx.relu:
            grad = grad * (out > 0).to(grad.dtype)
        needs = ctx.needs_input_grad
        grad_x, grad_ws = chain_backward(x, stages, grad, [needs[0], *needs[1 : 1 + n]])
        grad_b = grad.sum(dim=(0, 2, 3)) if ctx.has_bias and needs[1 + n] else None
        return (grad_x, *grad_ws, grad_b, None, None, None, None)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)

    @torch.library.impl(qualname, "CUDA", lib=LIB)
    def _cuda(*args, **kwargs):
        call = spec.parse(args, kwargs)
        spec.validate(call)  # the same ValueErrors as on CPU, whichever backend runs
        kernel = cuda_kernel(spec.name, call.x.dtype)
        if kernel is None:
            return reference_forward(call.x, spec.stages(call), call.bias, call.relu)
        return kernel(*call.kernel_args())


def register_all() -> None:
    """Define and register every op (once, at ``import mtd_kernels``)."""
    for spec in SPECS.values():
        _register(spec)


def register_cpu_fallbacks() -> None:
    """Without the compiled extension, CPU calls run the reference chain (warning once)."""
    for name, spec in SPECS.items():

        def _cpu(*args, _spec=spec, **kwargs):
            _warn_fallback_once()
            return _spec.reference(*args, **kwargs)

        LIB.impl(name, _cpu, "CPU")
