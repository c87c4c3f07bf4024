"""Fused Triton CP4 conv, one kernel: 1x1 (R, S) -> depthwise kh x 1 -> depthwise 1 x kw -> 1x1 (T, R)
+ bias [ReLU].

The vertical filter carries the H part of stride/padding/dilation, the horizontal one the W part;
both depthwise stages run in the program's registers as one kh x kw sum of products of their taps.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ops.cp4_conv2d import SPEC
from ._common import (first_pointwise_at, last_pointwise, launch, make_configs, make_pruner, output_pixels,
                      store_output, tile_ids)


@triton.autotune(
    configs=make_configs(["BLOCK_R"]),
    key=["P", "S", "R", "T", "KH", "KW"],
    prune_configs_by={"early_config_prune": make_pruner({"BLOCK_S": "S", "BLOCK_R": "R", "BLOCK_T": "T"})},
)
@triton.jit
def _cp4_conv2d_kernel(
    x_ptr, w_first_ptr, w_vert_ptr, w_horiz_ptr, w_last_ptr, bias_ptr, out_ptr,
    P, S, R, T, H, W, HO, WO,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_p, pid_t = tile_ids(T, BLOCK_T)
    n, ho, wo, pix_ok = output_pixels(pid_p, P, HO, WO, BLOCK_P)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    x_batch_off = n.to(tl.int64) * stride_xn
    acc = tl.zeros((BLOCK_P, BLOCK_T), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < R
        z = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)  # output of both depthwise stages
        # A runtime loop over the kh x kw taps (not unrolled): one tap's offsets live at a time.  Tap
        # (i, j) reads the first stage at (hi, wi) and weighs it by w_vertical[r, i] * w_horizontal[r, j],
        # which is the vertical-then-horizontal pair of depthwise convs (both zero-padded) in one sum.
        for tap in range(0, KH * KW):
            i = tap // KW
            j = tap % KW
            hi = ho * STRIDE_H - PAD_H + i * DIL_H
            wi = wo * STRIDE_W - PAD_W + j * DIL_W
            y = first_pointwise_at(x_ptr, w_first_ptr, x_batch_off, hi, wi, pix_ok, r, r_ok, S, H, W,
                                   stride_xc, stride_xh, stride_xw,
                                   BLOCK_P, BLOCK_S, BLOCK_R, DOT_PRECISION)
            w_v = tl.load(w_vert_ptr + r * KH + i, mask=r_ok, other=0.0).to(tl.float32)  # (BLOCK_R,)
            w_h = tl.load(w_horiz_ptr + r * KW + j, mask=r_ok, other=0.0).to(tl.float32)  # (BLOCK_R,)
            z += y * (w_v * w_h)[None, :]
        acc = last_pointwise(acc, z, w_last_ptr, r, r_ok, t, t_ok, R, DOT_PRECISION)
    store_output(acc, bias_ptr, out_ptr, n, ho, wo, pix_ok, t, t_ok,
                 stride_on, stride_oc, stride_oh, stride_ow, HAS_BIAS, RELU)


def cp4_conv2d(x: torch.Tensor, w_first: torch.Tensor, w_vertical: torch.Tensor, w_horizontal: torch.Tensor,
               w_last: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
               relu: bool = False, *, allow_tf32: Optional[bool] = None,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused CP4 conv on CUDA (or CPU under ``TRITON_INTERPRET=1``); arguments as ``torch.ops.mtd.cp4_conv2d``.

    ``allow_tf32`` (fp32 only) defaults to ``torch.backends.cuda.matmul.allow_tf32``; ``out`` is an
    optional preallocated output of any strides.
    """
    args = (x, w_first, w_vertical, w_horizontal, w_last, bias, stride, padding, dilation, relu)
    return launch(SPEC, _cp4_conv2d_kernel, args, lambda w: ((w[0].shape[0],), (w[1].shape[2], w[2].shape[3])),
                  allow_tf32, out)
