"""``mtd::cp4_conv2d`` — four-factor CP (Lebedev et al. 2015), one op.

    x (N, S, H, W) --1x1 w_first (R, S, 1, 1)--> (N, R, H, W)
      --depthwise kh x 1 w_vertical (R, 1, kh, 1), stride/padding/dilation along H--> (N, R, Ho, W)
      --depthwise 1 x kw w_horizontal (R, 1, 1, kw), stride/padding/dilation along W--> (N, R, Ho, Wo)
      --1x1 w_last (T, R, 1, 1)--> (N, T, Ho, Wo)  + bias  [ReLU]
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from ._chain import Stage, check_common
from ._spec import OpSpec

SCHEMA = (
    "cp4_conv2d(Tensor input, Tensor w_first, Tensor w_vertical, Tensor w_horizontal, Tensor w_last, "
    "Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, bool relu=False) -> Tensor"
)


def build_stages(weights: Sequence[torch.Tensor], stride, padding, dilation) -> List[Stage]:
    w_first, w_v, w_h, w_last = weights
    r = w_v.shape[0]
    return [
        Stage(w_first),
        Stage(w_v, (stride[0], 1), (padding[0], 0), (dilation[0], 1), groups=r),
        Stage(w_h, (1, stride[1]), (0, padding[1]), (1, dilation[1]), groups=r),
        Stage(w_last),
    ]


def check(x, weights, bias, stride, padding, dilation) -> None:
    check_common("cp4_conv2d", x, weights, bias, stride, padding, dilation)
    w_first, w_v, w_h, w_last = weights
    r = w_first.shape[0]
    ok = (
        w_v.shape[0] == r and w_v.shape[1] == 1 and w_v.shape[3] == 1
        and w_h.shape[0] == r and w_h.shape[1] == 1 and w_h.shape[2] == 1
        and w_last.shape[1] == r
    )
    if not ok:
        raise ValueError(
            "mtd.cp4_conv2d: factor shapes do not chain: expected w_first (R, S, 1, 1), "
            "w_vertical (R, 1, kh, 1), w_horizontal (R, 1, 1, kw), w_last (T, R, 1, 1); got "
            f"{tuple(w_first.shape)}, {tuple(w_v.shape)}, {tuple(w_h.shape)}, {tuple(w_last.shape)}"
        )


SPEC = OpSpec("cp4_conv2d", SCHEMA, 4, build_stages, check)
