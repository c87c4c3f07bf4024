"""``mtd::bn_relu`` and ``mtd::bn_relu_backward`` — training-mode BatchNorm -> ReLU [-> 2x2 max-pool] in one op.

    input  (N, C, H, W)   float32 or bfloat16; channels_last is the kernel's layout (another one is converted)
    weight (C,), bias (C,)  the BatchNorm's affine parameters (float32 under autocast)
                          (arithmetic is float32 on the input's values; outputs are rounded to the input's dtype)
    eps                   the BatchNorm's eps
    pool                  then a 2x2 / stride 2 max-pool (floor; an odd last row or column is dropped)
      --> (output (N, C, Hp, Wp) laid out like ``input``, batch mean (C,), biased batch variance (C,)), the
          statistics in float32; the normalisation uses the batch statistics, as ``nn.BatchNorm2d`` in training

    bn_relu_backward(grad, input, weight, bias, mean, var, eps, pool)
      --> (grad input, grad weight, grad bias): the gradient of ``output`` above (mean and var are its statistics;
          they are not differentiable outputs)

This is what ``mtd.train.fused_activations`` runs in place of ``BatchNorm2d, ReLU[, MaxPool2d(2)]`` while a model
fine-tunes on the CPU: the separate ops pass over the full-width maps about ten times a step, the fused kernel
(``csrc/cpu/bn_relu.cpp``) four times, and it saves only the input for backward. The running statistics are the
caller's to update (from the returned mean and variance). This file is the op's one description: schemas, argument
check, output shapes and reference.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from ._chain import wants_channels_last
from ._signature import bind

NAME = "bn_relu"
SCHEMA = ("bn_relu(Tensor input, Tensor weight, Tensor bias, float eps=1e-05, bool pool=False) "
          "-> (Tensor, Tensor, Tensor)")
BACKWARD_NAME = "bn_relu_backward"
BACKWARD_SCHEMA = ("bn_relu_backward(Tensor grad, Tensor input, Tensor weight, Tensor bias, Tensor mean, Tensor var, "
                   "float eps=1e-05, bool pool=False) -> (Tensor, Tensor, Tensor)")


def layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if wants_channels_last(x) else torch.contiguous_format


def check(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pool: bool) -> Tuple[int, ...]:
    """ValueError naming the problem (the C++ kernel's conditions and messages), else the output shape."""
    if x.dim() != 4:
        raise ValueError(f"mtd.{op}: input must be 4-D (N, C, H, W), got {x.dim()} dims")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"mtd.{op}: input must be float32 or bfloat16, got {x.dtype}")
    n, c, h, w = x.shape
    for t in (weight, bias):
        if t.dim() != 1 or t.shape[0] != c:
            raise ValueError(f"mtd.{op}: weight and bias must have shape ({c},), got {list(t.shape)}")
        if not t.is_floating_point() or t.device != x.device:
            raise ValueError(f"mtd.{op}: weight and bias must be floating tensors on the input's device")
    if n * h * w <= 1:
        raise ValueError(f"mtd.{op}: batch statistics need more than one value per channel, got input shape "
                         f"{list(x.shape)}")
    if pool and (h < 2 or w < 2):
        raise ValueError(f"mtd.{op}: 2x2 pooling needs an input of at least 2x2 pixels, got {list(x.shape)}")
    return (n, c, h // 2, w // 2) if pool else (n, c, h, w)


def check_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   mean: torch.Tensor, var: torch.Tensor, pool: bool) -> None:
    shape = check(BACKWARD_NAME, x, weight, bias, pool)
    if tuple(grad.shape) != shape:
        raise ValueError(f"mtd.{BACKWARD_NAME}: grad must have the output's shape {list(shape)}, got "
                         f"{list(grad.shape)}")
    for t in (mean, var):
        if t.dim() != 1 or t.shape[0] != x.shape[1] or t.dtype != torch.float32:
            raise ValueError(f"mtd.{BACKWARD_NAME}: mean and var must be float32 of shape ({x.shape[1]},), got "
                             f"{t.dtype} {list(t.shape)}")


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, pool: bool) -> torch.Tensor:
    """The plain-PyTorch ops (differentiable): batch-statistics BatchNorm, ReLU, max-pool, in float32 on the
    input's values, rounded to its dtype at the end (the op's contract: a bf16 input is not rounded in between)."""
    y = F.relu(F.batch_norm(x.float(), None, None, weight.float(), bias.float(), training=True, eps=eps))
    return (F.max_pool2d(y, 2) if pool else y).to(x.dtype)


def reference(*args, **kwargs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checked plain-PyTorch ``bn_relu``."""
    v = bind(SCHEMA, args, kwargs)
    x, weight, bias, eps, pool = v["input"], v["weight"], v["bias"], float(v["eps"]), bool(v["pool"])
    check(NAME, x, weight, bias, pool)
    xf = x.detach().float()
    mean, var = xf.mean(dim=(0, 2, 3)), xf.var(dim=(0, 2, 3), unbiased=False)
    return forward(x, weight, bias, eps, pool).contiguous(memory_format=layout(x)), mean, var


def backward_reference(*args, **kwargs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checked plain-PyTorch ``bn_relu_backward``: autograd through :func:`forward` (which recomputes the batch
    statistics from ``input``; ``mean`` and ``var`` are only checked)."""
    v = bind(BACKWARD_SCHEMA, args, kwargs)
    grad, x, weight, bias = v["grad"], v["input"], v["weight"], v["bias"]
    eps, pool = float(v["eps"]), bool(v["pool"])
    check_backward(grad, x, weight, bias, v["mean"], v["var"], pool)
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    with torch.enable_grad():
        out = forward(*leaves, eps, pool)
        dx, dw, db = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return dx.contiguous(memory_format=layout(x)), dw.to(weight.dtype), db.to(bias.dtype)
