"""``mtd::tucker_conv2d`` — Tucker-2 convolution, one op.

    x (N, S, H, W) --1x1 w_first (R1, S, 1, 1)--> (N, R1, H, W)
      --dense kh x kw core w_core (R2, R1, kh, kw), stride/padding/dilation--> (N, R2, Ho, Wo)
      --1x1 w_last (T, R2, 1, 1)--> (N, T, Ho, Wo)  + bias  [ReLU]
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from ._chain import Stage, check_common
from ._spec import OpSpec

SCHEMA = (
    "tucker_conv2d(Tensor input, Tensor w_first, Tensor w_core, Tensor w_last, Tensor? bias=None, "
    "int[2] stride=1, int[2] padding=0, int[2] dilation=1, bool relu=False) -> Tensor"
)


def build_stages(weights: Sequence[torch.Tensor], stride, padding, dilation) -> List[Stage]:
    w_first, w_core, w_last = weights
    return [Stage(w_first), Stage(w_core, tuple(stride), tuple(padding), tuple(dilation)), Stage(w_last)]


def check(x, weights, bias, stride, padding, dilation) -> None:
    check_common("tucker_conv2d", x, weights, bias, stride, padding, dilation)
    w_first, w_core, w_last = weights
    if w_core.shape[1] != w_first.shape[0] or w_last.shape[1] != w_core.shape[0]:
        raise ValueError(
            "mtd.tucker_conv2d: factor shapes do not chain: expected w_first (R1, S, 1, 1), "
            f"w_core (R2, R1, kh, kw), w_last (T, R2, 1, 1); got {tuple(w_first.shape)}, "
            f"{tuple(w_core.shape)}, {tuple(w_last.shape)}"
        )


SPEC = OpSpec("tucker_conv2d", SCHEMA, 3, build_stages, check)
