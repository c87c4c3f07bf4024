"""Deploy a compressed model: ONNX made of standard Conv nodes.

Each fused op ``torch.ops.mtd.<op>`` is exported as its chain of ``Conv`` nodes — the chain its schema file
describes (``mtd_kernels/ops/<op>.py``, ``build_stages``) — through a symbolic function registered with
the TorchScript ONNX exporter (``torch.onnx.register_custom_op_symbolic``). In eval mode that exporter
folds each BatchNorm into the Conv before it, so the file runs on any ONNX runtime without mtd.
(The dynamo exporter would need ``onnxscript``; with torch 2.13 the TorchScript one needs no extra
package and handles custom ops through this registry.)

``torch.export`` needs nothing from here: ``torch.export.export(model, (x,))`` keeps the fused ops as
``torch.ops.mtd.*`` calls, so the saved program runs where ``mtd_kernels`` is installed.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

PathLike = Union[str, os.PathLike]
ONNX_OPSET = 17
_registered = False


def export_onnx(model: nn.Module, path: PathLike, example_input: torch.Tensor, *, opset: int = ONNX_OPSET,
                dynamic_batch: bool = True) -> Path:
    """Write ``model`` (in eval mode) as ONNX to ``path`` atomically; returns the path.

    ``example_input`` (N, C, H, W) fixes the input's channels and size (the batch stays dynamic when
    ``dynamic_batch``). The graph holds standard ONNX ops only (Conv chains, BatchNorm folded).
    """
    from .utils import atomic_write

    if not isinstance(example_input, torch.Tensor) or example_input.ndim != 4:
        raise ValueError("example_input must be one (N, C, H, W) tensor")
    register_onnx_translations()
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with atomic_write(path, "wb") as handle, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
            torch.onnx.export(model, (example_input.to(device),), handle, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"], do_constant_folding=True,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None)
    finally:
        model.train(was_training)
    return Path(path)


def register_onnx_translations(opset: int = ONNX_OPSET) -> None:
    """Register the Conv-chain translation of every ``torch.ops.mtd`` op with the TorchScript exporter."""
    global _registered
    if _registered:
        return
    from mtd_kernels.ops import SPECS

    from mtd_kernels.ops import rank_bridge

    for name, spec in SPECS.items():
        torch.onnx.register_custom_op_symbolic(f"mtd::{name}", _conv_chain_symbolic(spec), opset)
    torch.onnx.register_custom_op_symbolic(f"mtd::{rank_bridge.NAME}", _rank_bridge_symbolic, opset)
    _registered = True


def _conv_chain_symbolic(spec) -> Callable:
    """The symbolic function of one op: ``(g, input, *weights, bias, stride, padding, dilation, relu)``."""
    from torch.onnx import symbolic_helper as sh

    n_weights, build_stages = spec.n_weights, spec.build_stages

    def symbolic(g, x, *args):
        weights, (bias, stride, padding, dilation, relu) = args[:n_weights], args[n_weights:]
        geometry = [sh._parse_arg(v, "is") for v in (stride, padding, dilation)]
        # the op's own stage list, built on meta tensors of the weights' shapes: it gives each Conv's geometry
        shapes = [sh._get_tensor_sizes(w) for w in weights]
        stages = build_stages([torch.empty(s, device="meta") for s in shapes], *geometry)
        out = x
        for i, (stage, weight) in enumerate(zip(stages, weights)):
            last_with_bias = i == len(stages) - 1 and not sh._is_none(bias)
            out = _conv_node(g, out, weight, bias if last_with_bias else None, stage)
        return g.op("Relu", out) if sh._parse_arg(relu, "b") else out

    return symbolic


def _conv_node(g, x, weight, bias, stage):
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return g.op("Conv", *inputs, kernel_shape_i=list(stage.weight.shape[2:]), strides_i=list(stage.stride),
                pads_i=[*stage.padding, *stage.padding], dilations_i=list(stage.dilation), group_i=stage.groups)


def _rank_bridge_symbolic(g, x, spatial, w_last, bias, w_next, stride, padding, dilation, relu, pool):
    """``mtd::rank_bridge`` as standard nodes: its spatial Conv(s), Conv (last 1x1, bias), Relu, MaxPool, Conv (next)."""
    from torch.onnx import symbolic_helper as sh

    from mtd_kernels.ops import rank_bridge
    from mtd_kernels.ops._chain import Stage

    weights = sh._unpack_list(spatial)
    geometry = [sh._parse_arg(v, "is") for v in (stride, padding, dilation)]
    none = [sh._is_none(t) for t in (w_last, bias, w_next)]
    meta = lambda t: torch.empty(sh._get_tensor_sizes(t), device="meta")  # noqa: E731
    # the batch (dynamic: None) does not matter, the channels decide the spatial convs' groups
    x_meta = torch.empty([1 if d is None else d for d in sh._get_tensor_sizes(x)], device="meta")
    call = rank_bridge.BridgeCall(x_meta, [meta(w) for w in weights], None if none[0] else meta(w_last), None,
                                  None, *geometry, False, False)
    stages = rank_bridge.spatial_stages(call)
    out = x
    for i, (stage, weight) in enumerate(zip(stages, weights)):
        on_this = none[0] and i == len(stages) - 1 and not none[1]  # no last 1x1: the bias goes on the kernel
        out = _conv_node(g, out, weight, bias if on_this else None, stage)
    if not none[0]:
        out = _conv_node(g, out, w_last, None if none[1] else bias, Stage(call.w_last))
    if sh._parse_arg(relu, "b"):
        out = g.op("Relu", out)
    if sh._parse_arg(pool, "b"):
        out = g.op("MaxPool", out, kernel_shape_i=[2, 2], strides_i=[2, 2])
    if not none[2]:
        out = _conv_node(g, out, w_next, None, Stage(meta(w_next)))
    return out
