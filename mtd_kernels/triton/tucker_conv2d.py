"""Fused Triton Tucker-2 conv: 1x1 (R1, S) -> dense kh x kw core (R2, R1) -> 1x1 (T, R2) + bias [ReLU], one kernel.

The core is an implicit GEMM: for each tap, ``y (BLOCK_P, R1) @ w_core[:, :, i, j]^T (R1, R2)`` with
``tl.dot``, where ``y`` is the first pointwise stage recomputed on the pixels the tap reads.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ops.tucker_conv2d import SPEC
from ._common import (first_pointwise_at, last_pointwise, launch, make_configs, make_pruner, mma,
                      output_pixels, store_output, tile_ids)


@triton.autotune(
    configs=make_configs(["BLOCK_R1", "BLOCK_R2"]),
    key=["P", "S", "R1", "R2", "T", "KH", "KW"],
    prune_configs_by={"early_config_prune": make_pruner(
        {"BLOCK_S": "S", "BLOCK_R1": "R1", "BLOCK_R2": "R2", "BLOCK_T": "T"})},
)
@triton.jit
def _tucker_conv2d_kernel(
    x_ptr, w_first_ptr, w_core_ptr, w_last_ptr, bias_ptr, out_ptr,
    P, S, R1, R2, T, H, W, HO, WO,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_R2: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_p, pid_t = tile_ids(T, BLOCK_T)
    n, ho, wo, pix_ok = output_pixels(pid_p, P, HO, WO, BLOCK_P)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    x_batch_off = n.to(tl.int64) * stride_xn
    acc = tl.zeros((BLOCK_P, BLOCK_T), dtype=tl.float32)
    for r2_0 in range(0, R2, BLOCK_R2):
        r2 = r2_0 + tl.arange(0, BLOCK_R2)
        r2_ok = r2 < R2
        z = tl.zeros((BLOCK_P, BLOCK_R2), dtype=tl.float32)  # core output of these pixels
        # A runtime loop over the taps (not unrolled): one tap's offsets live at a time.
        for tap in range(0, KH * KW):
            hi = ho * STRIDE_H - PAD_H + (tap // KW) * DIL_H
            wi = wo * STRIDE_W - PAD_W + (tap % KW) * DIL_W
            for r1_0 in range(0, R1, BLOCK_R1):
                r1 = r1_0 + tl.arange(0, BLOCK_R1)
                r1_ok = r1 < R1
                y = first_pointwise_at(x_ptr, w_first_ptr, x_batch_off, hi, wi, pix_ok, r1, r1_ok,
                                       S, H, W, stride_xc, stride_xh, stride_xw,
                                       BLOCK_P, BLOCK_S, BLOCK_R1, DOT_PRECISION)
                # w_core is contiguous (R2, R1, KH, KW): the (BLOCK_R1, BLOCK_R2) slice of this tap
                core = tl.load(w_core_ptr + r2[None, :] * (R1 * KH * KW) + r1[:, None] * (KH * KW) + tap,
                               mask=r1_ok[:, None] & r2_ok[None, :], other=0.0)
                z = mma(y.to(core.dtype), core, z, DOT_PRECISION)
        acc = last_pointwise(acc, z, w_last_ptr, r2, r2_ok, t, t_ok, R2, DOT_PRECISION)
    store_output(acc, bias_ptr, out_ptr, n, ho, wo, pix_ok, t, t_ok,
                 stride_on, stride_oc, stride_oh, stride_ow, HAS_BIAS, RELU)


def tucker_conv2d(x: torch.Tensor, w_first: torch.Tensor, w_core: torch.Tensor, w_last: torch.Tensor,
                  bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1, relu: bool = False,
                  *, allow_tf32: Optional[bool] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused Tucker-2 conv on CUDA (or CPU under ``TRITON_INTERPRET=1``); arguments as the op's.

    ``allow_tf32`` (fp32 only) defaults to ``torch.backends.cuda.matmul.allow_tf32``; ``out`` is an
    optional preallocated output of any strides.
    """
    args = (x, w_first, w_core, w_last, bias, stride, padding, dilation, relu)
    return launch(SPEC, _tucker_conv2d_kernel, args, lambda w: ((w[1].shape[1], w[1].shape[0]), tuple(w[1].shape[2:])),
                  allow_tf32, out)
