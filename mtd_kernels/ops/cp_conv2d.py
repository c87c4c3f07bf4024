"""``mtd::cp_conv2d`` — CP3 "pointwise–depthwise–pointwise" convolution, one op.

    x (N, S, H, W) --1x1 w_first (R, S, 1, 1)--> (N, R, H, W)
      --depthwise kh x kw w_depthwise (R, 1, kh, kw), stride/padding/dilation--> (N, R, Ho, Wo)
      --1x1 w_last (T, R, 1, 1)--> (N, T, Ho, Wo)  + bias (T,)  [ReLU]
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from ._chain import Stage, check_common
from ._spec import OpSpec

SCHEMA = (
    "cp_conv2d(Tensor input, Tensor w_first, Tensor w_depthwise, Tensor w_last, Tensor? bias=None, "
    "int[2] stride=1, int[2] padding=0, int[2] dilation=1, bool relu=False) -> Tensor"
)


def build_stages(weights: Sequence[torch.Tensor], stride, padding, dilation) -> List[Stage]:
    w_first, w_dw, w_last = weights
    return [
        Stage(w_first),
        Stage(w_dw, tuple(stride), tuple(padding), tuple(dilation), groups=w_dw.shape[0]),
        Stage(w_last),
    ]


def check(x, weights, bias, stride, padding, dilation) -> None:
    check_common("cp_conv2d", x, weights, bias, stride, padding, dilation)
    w_first, w_dw, w_last = weights
    r = w_first.shape[0]
    if w_dw.shape[0] != r or w_dw.shape[1] != 1 or w_last.shape[1] != r:
        raise ValueError(
            "mtd.cp_conv2d: factor shapes do not chain: expected w_first (R, S, 1, 1), "
            f"w_depthwise (R, 1, kh, kw), w_last (T, R, 1, 1) with one R; got {tuple(w_first.shape)}, "
            f"{tuple(w_dw.shape)}, {tuple(w_last.shape)}"
        )


SPEC = OpSpec("cp_conv2d", SCHEMA, 3, build_stages, check)
