"""Fused Triton CP3 conv: 1x1 (R, S) -> depthwise kh x kw -> 1x1 (T, R) + bias [ReLU], one kernel."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ops.cp_conv2d import SPEC
from ._common import (first_pointwise_at, last_pointwise, launch, make_configs, make_pruner, output_pixels,
                      store_output, tile_ids)


@triton.autotune(
    configs=make_configs(["BLOCK_R"]),
    key=["P", "S", "R", "T", "KH", "KW"],
    prune_configs_by={"early_config_prune": make_pruner({"BLOCK_S": "S", "BLOCK_R": "R", "BLOCK_T": "T"})},
)
@triton.jit
def _cp_conv2d_kernel(
    x_ptr, w_first_ptr, w_dw_ptr, w_last_ptr, bias_ptr, out_ptr,
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
        z = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)  # depthwise output of these pixels
        # A runtime loop over the taps (not unrolled): one tap's offsets live at a time.
        for tap in range(0, KH * KW):
            hi = ho * STRIDE_H - PAD_H + (tap // KW) * DIL_H
            wi = wo * STRIDE_W - PAD_W + (tap % KW) * DIL_W
            y = first_pointwise_at(x_ptr, w_first_ptr, x_batch_off, hi, wi, pix_ok, r, r_ok, S, H, W,
                                   stride_xc, stride_xh, stride_xw,
                                   BLOCK_P, BLOCK_S, BLOCK_R, DOT_PRECISION)
            w_tap = tl.load(w_dw_ptr + r * (KH * KW) + tap, mask=r_ok, other=0.0)  # (BLOCK_R,)
            z += y * w_tap.to(tl.float32)[None, :]
        acc = last_pointwise(acc, z, w_last_ptr, r, r_ok, t, t_ok, R, DOT_PRECISION)
    store_output(acc, bias_ptr, out_ptr, n, ho, wo, pix_ok, t, t_ok,
                 stride_on, stride_oc, stride_oh, stride_ow, HAS_BIAS, RELU)


def cp_conv2d(x: torch.Tensor, w_first: torch.Tensor, w_depthwise: torch.Tensor, w_last: torch.Tensor,
              bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1, relu: bool = False,
              *, allow_tf32: Optional[bool] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused CP3 conv on CUDA (or CPU under ``TRITON_INTERPRET=1``); arguments as ``torch.ops.mtd.cp_conv2d``.

    ``allow_tf32`` (fp32 only) defaults to ``torch.backends.cuda.matmul.allow_tf32``; ``out`` is an
    optional preallocated output of any strides.
    """
    args = (x, w_first, w_depthwise, w_last, bias, stride, padding, dilation, relu)
    return launch(SPEC, _cp_conv2d_kernel, args, lambda w: ((w[0].shape[0],), tuple(w[1].shape[2:])),
                  allow_tf32, out)
