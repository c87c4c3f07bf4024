"""Registers every op of :data:`mtd_kernels.ops.SPECS`: schema, fake kernel, autograd, CUDA entry,
and (without the compiled extension) the CPU fallback.  The compiled CPU kernels register
themselves from C++ (``TORCH_LIBRARY_IMPL(mtd, CPU, m)``) when ``mtd_kernels._C`` is imported.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from ._library import LIB
from ._loader import extension_error
from .dispatch import cuda_kernel
from .ops import SPECS, OpSpec
from .ops import bn_relu
from .ops import rank_bridge as bridge
from .ops import rank_run as run
from .ops._chain import chain_backward, empty_output, reference_forward
from .ops._signature import bind

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
    _register_autocast(qualname)

    LIB.impl(spec.name, cuda_entry(spec), "CUDA")


def _register_autocast(qualname: str) -> None:
    """Under autocast (``mtd.utils.precision``'s bf16 passes) the op runs in bf16: every floating input is cast,
    so factors and input agree (the kernels take one dtype) and the low-precision path runs. bf16 whatever the
    region's dtype: autocast's own dtype is not visible to a fixed-cast rule, and bf16 is the one mtd uses."""
    for device_type in ("cpu", "cuda"):
        torch.library.register_autocast(qualname, device_type, torch.bfloat16, lib=LIB)


def cuda_entry(spec: OpSpec) -> Callable:
    """The op's CUDA entry: the chosen kernel (:mod:`mtd_kernels.dispatch`), else the checked chain.

    One check per call, with the same ValueErrors as on CPU: the Triton launcher and the CUDA kernels
    (``csrc/op_checks.cpp``) check their arguments themselves, so only the chain is checked here.
    """

    def _cuda(*args, **kwargs):
        call = spec.parse(args, kwargs)
        kernel = cuda_kernel(spec.name, call.x.dtype)
        if kernel is None:
            spec.validate(call)
            return reference_forward(call.x, spec.stages(call), call.bias, call.relu)
        return kernel(*call.kernel_args())

    return _cuda


def _register_bridge() -> None:
    """``mtd::rank_bridge``: the same four entries, from its description in ``ops/rank_bridge.py``."""
    LIB.define(bridge.SCHEMA)
    qualname = f"mtd::{bridge.NAME}"

    @torch.library.register_fake(qualname)
    def _fake(*args, **kwargs):
        call = bridge.parse(args, kwargs)
        return call.x.new_empty(bridge.output_shape(call)).contiguous(memory_format=bridge.layout(call.x))

    def setup_context(ctx, inputs, output):
        call = bridge.parse(inputs)
        ctx.geometry = (call.stride, call.padding, call.dilation, call.relu, call.pool)
        ctx.n_spatial = len(call.spatial)
        ctx.present = [t is not None for t in (call.w_last, call.bias, call.w_next)]
        ctx.save_for_backward(call.x, *call.spatial, *[t for t in (call.w_last, call.bias, call.w_next) if t is not None])

    def backward(ctx, grad):
        # Recomputes the plain stages and differentiates them: the bridge serves inference, so its
        # backward favours memory (nothing saved but the inputs) over speed.
        saved = list(ctx.saved_tensors)
        x, spatial, rest = saved[0], saved[1:1 + ctx.n_spatial], iter(saved[1 + ctx.n_spatial:])
        optional = [next(rest) if present else None for present in ctx.present]
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip([x, *spatial, *optional], ctx.needs_input_grad_flat)]
        with torch.enable_grad():
            stride, padding, dilation, relu, pool = ctx.geometry
            call = bridge.BridgeCall(leaves[0], leaves[1:1 + ctx.n_spatial], *leaves[1 + ctx.n_spatial:], stride,
                                     padding, dilation, relu, pool)
            out = bridge.forward(call)
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True) if wanted else [])
        flat = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
        return (flat[0], flat[1:1 + ctx.n_spatial], *flat[1 + ctx.n_spatial:], None, None, None, None, None)

    def setup_and_flags(ctx, inputs, output):
        setup_context(ctx, inputs, output)
        spatial_needs = ctx.needs_input_grad[1]
        spatial_needs = list(spatial_needs) if isinstance(spatial_needs, (list, tuple)) else [spatial_needs] * ctx.n_spatial
        ctx.needs_input_grad_flat = [ctx.needs_input_grad[0], *spatial_needs, *ctx.needs_input_grad[2:5]]

    torch.library.register_autograd(qualname, backward, setup_context=setup_and_flags)
    _register_autocast(qualname)

    LIB.impl(bridge.NAME, bridge_cuda_entry, "CUDA")


def bridge_cuda_entry(*args, **kwargs) -> torch.Tensor:
    """``mtd::rank_bridge`` on CUDA: its Triton twin, else the checked reference (one check per call)."""
    kernel = cuda_kernel(bridge.NAME, bridge.parse(args, kwargs).x.dtype)
    return bridge.reference(*args, **kwargs) if kernel is None else kernel(*args, **kwargs)


def _register_run() -> None:
    """``mtd::rank_run``: fake kernel, autograd, autocast and CUDA entry from ``ops/rank_run.py``."""
    LIB.define(run.SCHEMA)
    qualname = f"mtd::{run.NAME}"

    @torch.library.register_fake(qualname)
    def _fake(*args, **kwargs):
        x, weights, meta, _ = run.parse(args, kwargs)
        return x.new_empty(run.output_shape(x, weights, meta)).contiguous(memory_format=bridge.layout(x))

    def setup_context(ctx, inputs, output):
        x, weights, meta, packed = run.parse(inputs)
        ctx.meta = meta
        ctx.n_packed = len(packed)
        needs = ctx.needs_input_grad[1]
        needs = list(needs) if isinstance(needs, (list, tuple)) else [needs] * len(weights)
        ctx.needs_flat = [ctx.needs_input_grad[0], *needs]
        ctx.save_for_backward(x, *weights)

    def backward(ctx, grad):
        # Recomputes the plain bridges and differentiates them (nothing saved but the inputs), as rank_bridge does:
        # the run serves inference.
        leaves = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_flat)]
        with torch.enable_grad():
            out = run.forward(leaves[0], leaves[1:], ctx.meta)
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True) if wanted else [])
        flat = [next(grads) if t.requires_grad else None for t in leaves]
        return flat[0], flat[1:], None, [None] * ctx.n_packed  # packed: a copy of the weights, not an input

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    _register_autocast(qualname)
    LIB.impl(run.NAME, run_bridge_by_bridge, "CUDA")


def run_bridge_by_bridge(*args, **kwargs) -> torch.Tensor:
    """``mtd::rank_run`` as one ``mtd::rank_bridge`` call per bridge (CUDA: each its Triton kernel where it has one)."""
    x, weights, meta, _ = run.parse(args, kwargs)
    y = x
    for args_k in run.split(weights, meta):
        spatial, w_last, bias, w_next, stride, padding, dilation, relu, pool = args_k
        y = torch.ops.mtd.rank_bridge(y, spatial, w_last, bias, w_next, list(stride), list(padding), list(dilation),
                                      relu, pool)
    return y.contiguous(memory_format=bridge.layout(x))


def _register_bn_relu() -> None:
    """``mtd::bn_relu`` and its backward op: fake kernels, autograd and CUDA entries from ``ops/bn_relu.py``. No
    autocast rule: the input keeps the dtype the convolution gave it, the BatchNorm's parameters theirs (float32),
    as with ``nn.BatchNorm2d`` under autocast."""
    LIB.define(bn_relu.SCHEMA)
    LIB.define(bn_relu.BACKWARD_SCHEMA)

    @torch.library.register_fake(f"mtd::{bn_relu.NAME}")
    def _fake(*args, **kwargs):
        v = bind(bn_relu.SCHEMA, args, kwargs)
        x = v["input"]
        shape = bn_relu.check(bn_relu.NAME, x, v["weight"], v["bias"], bool(v["pool"]))
        stats = x.new_empty(x.shape[1], dtype=torch.float32)
        return x.new_empty(shape).contiguous(memory_format=bn_relu.layout(x)), stats, stats.clone()

    @torch.library.register_fake(f"mtd::{bn_relu.BACKWARD_NAME}")
    def _fake_backward(*args, **kwargs):
        v = bind(bn_relu.BACKWARD_SCHEMA, args, kwargs)
        x, weight, bias = v["input"], v["weight"], v["bias"]
        bn_relu.check_backward(v["grad"], x, weight, bias, v["mean"], v["var"], bool(v["pool"]))
        return torch.empty_like(x, memory_format=bn_relu.layout(x)), torch.empty_like(weight), torch.empty_like(bias)

    def setup_context(ctx, inputs, output):
        v = bind(bn_relu.SCHEMA, inputs)
        _, mean, var = output
        ctx.eps, ctx.pool = float(v["eps"]), bool(v["pool"])
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(v["input"], v["weight"], v["bias"], mean, var)

    def backward(ctx, grad, _grad_mean, _grad_var):
        x, weight, bias, mean, var = ctx.saved_tensors
        dx, dw, db = torch.ops.mtd.bn_relu_backward(grad.contiguous(memory_format=bn_relu.layout(x)), x, weight,
                                                    bias, mean, var, ctx.eps, ctx.pool)
        needs = ctx.needs_input_grad
        return (dx if needs[0] else None, dw if needs[1] else None, db if needs[2] else None, None, None)

    torch.library.register_autograd(f"mtd::{bn_relu.NAME}", backward, setup_context=setup_context)
    LIB.impl(bn_relu.NAME, bn_relu.reference, "CUDA")
    LIB.impl(bn_relu.BACKWARD_NAME, bn_relu.backward_reference, "CUDA")


def register_all() -> None:
    """Define and register every op (once, at ``import mtd_kernels``)."""
    for spec in SPECS.values():
        _register(spec)
    _register_bridge()
    _register_run()
    _register_bn_relu()


def register_cpu_fallbacks() -> None:
    """Without the compiled extension, CPU calls run the reference chain (warning once)."""
    for name, spec in SPECS.items():

        def _cpu(*args, _spec=spec, **kwargs):
            _warn_fallback_once()
            return _spec.reference(*args, **kwargs)

        LIB.impl(name, _cpu, "CPU")

    def _bridge_cpu(*args, **kwargs):
        _warn_fallback_once()
        return bridge.reference(*args, **kwargs)

    LIB.impl(bridge.NAME, _bridge_cpu, "CPU")

    def _run_cpu(*args, **kwargs):
        _warn_fallback_once()
        return run.reference(*args, **kwargs)

    LIB.impl(run.NAME, _run_cpu, "CPU")

    def _bn_relu_cpu(*args, **kwargs):
        _warn_fallback_once()
        return bn_relu.reference(*args, **kwargs)

    def _bn_relu_backward_cpu(*args, **kwargs):
        _warn_fallback_once()
        return bn_relu.backward_reference(*args, **kwargs)

    LIB.impl(bn_relu.NAME, _bn_relu_cpu, "CPU")
    LIB.impl(bn_relu.BACKWARD_NAME, _bn_relu_backward_cpu, "CPU")
