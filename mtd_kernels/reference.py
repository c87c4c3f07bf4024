"""Plain-PyTorch reference implementations of every ``torch.ops.mtd`` op.

Each is the unfused chain of standard convolutions; the fused kernels are tested against these.
Arguments are the op's own (ints or pairs accepted for stride/padding/dilation).
"""
from __future__ import annotations

from typing import Optional

import torch

from .ops import SPECS


def _call(name: str, x, weights, bias, stride, padding, dilation, relu) -> torch.Tensor:
    return SPECS[name].reference(x, *weights, bias, stride, padding, dilation, relu)


def cp_conv2d_ref(x, w_first, w_depthwise, w_last, bias: Optional[torch.Tensor] = None,
                  stride=1, padding=0, dilation=1, relu: bool = False) -> torch.Tensor:
    """Reference CP3 chain: 1x1 (R, S) -> depthwise kh x kw (R) -> 1x1 (T, R) + bias [ReLU]."""
    return _call("cp_conv2d", x, (w_first, w_depthwise, w_last), bias, stride, padding, dilation, relu)


def cp4_conv2d_ref(x, w_first, w_vertical, w_horizontal, w_last, bias: Optional[torch.Tensor] = None,
                   stride=1, padding=0, dilation=1, relu: bool = False) -> torch.Tensor:
    """Reference CP4 chain: 1x1 -> depthwise kh x 1 -> depthwise 1 x kw -> 1x1 + bias [ReLU]."""
    return _call("cp4_conv2d", x, (w_first, w_vertical, w_horizontal, w_last), bias, stride, padding,
                 dilation, relu)


def tucker_conv2d_ref(x, w_first, w_core, w_last, bias: Optional[torch.Tensor] = None,
                      stride=1, padding=0, dilation=1, relu: bool = False) -> torch.Tensor:
    """Reference Tucker-2 chain: 1x1 (R1, S) -> dense kh x kw core (R2, R1) -> 1x1 (T, R2) + bias [ReLU]."""
    return _call("tucker_conv2d", x, (w_first, w_core, w_last), bias, stride, padding, dilation, relu)
