"""The Triton twin of ``mtd::rank_bridge``: spatial stage -> last 1x1 + bias [ReLU] [2x2 max-pool] -> next 1x1.

A program owns BLOCK_P output pixels (pooled ones when POOL) x BLOCK_N output channels (layer i+1's R, or
layer i's T for a run's tail). Per chunk of BLOCK_T of layer i's T channels it computes that chunk of the
layer's output at the (up to four) spatial positions under each output pixel, ReLU and max-pools it in
registers, and folds it into the output with layer i+1's first 1x1 (``tl.dot``): the T-channel map is never
written, which is the point of the op. The spatial stage is recomputed per T chunk and per output-channel
tile (it is the cheap part at the ranks of a compressed model); a CP4 pair runs as the depthwise kernel
that is its outer product (the same zero padding, so the same result up to rounding).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ops import rank_bridge as bridge
from ._common import (check_launch, device_guard, dot_precision, interpreting, make_pruner, mma, output_pixels,
                      prepare_output, stride_args, tile_ids)

# (BLOCK_P, BLOCK_R, BLOCK_R1, BLOCK_T, BLOCK_N, num_warps, num_stages); never timed on a GPU yet
_GPU_TILES = [(64, 32, 32, 64, 64, 4, 1), (32, 32, 32, 64, 64, 4, 2), (64, 16, 16, 32, 64, 4, 2),
              (128, 32, 32, 64, 32, 8, 2)]
_INTERPRETER_TILE = (16, 16, 16, 16, 16, 1, 1)


def _configs():
    tiles = [_INTERPRETER_TILE] if interpreting() else _GPU_TILES
    return [triton.Config({"BLOCK_P": p, "BLOCK_R": r, "BLOCK_R1": r1, "BLOCK_T": t, "BLOCK_N": n},
                          num_warps=w, num_stages=s) for p, r, r1, t, n, w, s in tiles]


@triton.jit
def _spatial(u_ptr, w_ptr, n_off, ho, wo, pix_ok, r, r_ok, R1, H, W, su_c, su_h, su_w,
             STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
             KH: tl.constexpr, KW: tl.constexpr, DEPTHWISE: tl.constexpr, BLOCK_P: tl.constexpr,
             BLOCK_R: tl.constexpr, BLOCK_R1: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(BLOCK_P, BLOCK_R) fp32: channels ``r`` of the spatial stage at output positions (ho, wo)."""
    v = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)
    for tap in range(0, KH * KW):
        hi = ho * STRIDE_H - PAD_H + (tap // KW) * DIL_H
        wi = wo * STRIDE_W - PAD_W + (tap % KW) * DIL_W
        inside = pix_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        pix = n_off + hi.to(tl.int64) * su_h + wi.to(tl.int64) * su_w
        if DEPTHWISE:  # w (R, 1, KH, KW): channel r reads channel r
            x = tl.load(u_ptr + pix[:, None] + r[None, :] * su_c, mask=inside[:, None] & r_ok[None, :], other=0.0)
            w = tl.load(w_ptr + r * (KH * KW) + tap, mask=r_ok, other=0.0)
            v += x.to(tl.float32) * w.to(tl.float32)[None, :]
        else:  # dense core w (R2, R1, KH, KW): a reduction over R1
            for c0 in range(0, R1, BLOCK_R1):
                c = c0 + tl.arange(0, BLOCK_R1)
                c_ok = c < R1
                x = tl.load(u_ptr + pix[:, None] + c[None, :] * su_c, mask=inside[:, None] & c_ok[None, :],
                            other=0.0)  # (BLOCK_P, BLOCK_R1)
                w = tl.load(w_ptr + r[None, :] * (R1 * KH * KW) + c[:, None] * (KH * KW) + tap,
                            mask=c_ok[:, None] & r_ok[None, :], other=0.0)  # (BLOCK_R1, BLOCK_R)
                v = mma(x, w, v, DOT_PRECISION)
    return v


@triton.jit
def _layer_out(u_ptr, w_sp_ptr, w_last_ptr, bias_ptr, n_off, ph, pw, pix_ok, t, t_ok, R1, R2, H, W,
               su_c, su_h, su_w, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
               KH: tl.constexpr, KW: tl.constexpr, DEPTHWISE: tl.constexpr, HAS_LAST: tl.constexpr,
               HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr, BLOCK_P: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_T: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """(BLOCK_P, BLOCK_T) fp32: layer i's output channels ``t`` (bias, ReLU, max over the pooled positions)."""
    best = tl.full((BLOCK_P, BLOCK_T), float("-inf"), dtype=tl.float32)
    for q in range(0, 4 if POOL else 1):
        if POOL:
            ho, wo = ph * 2 + q // 2, pw * 2 + q % 2
        else:
            ho, wo = ph, pw
        if HAS_LAST:
            h = tl.zeros((BLOCK_P, BLOCK_T), dtype=tl.float32)
            for r0 in range(0, R2, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                r_ok = r < R2
                v = _spatial(u_ptr, w_sp_ptr, n_off, ho, wo, pix_ok, r, r_ok, R1, H, W, su_c, su_h, su_w,
                             STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, KH, KW, DEPTHWISE, BLOCK_P, BLOCK_R,
                             BLOCK_R1, DOT_PRECISION)
                wl = tl.load(w_last_ptr + t[None, :] * R2 + r[:, None], mask=r_ok[:, None] & t_ok[None, :],
                             other=0.0)  # (BLOCK_R, BLOCK_T)
                h = mma(v.to(wl.dtype), wl, h, DOT_PRECISION)
        else:  # the spatial stage is the layer: its channels t
            h = _spatial(u_ptr, w_sp_ptr, n_off, ho, wo, pix_ok, t, t_ok, R1, H, W, su_c, su_h, su_w,
                         STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, KH, KW, DEPTHWISE, BLOCK_P, BLOCK_T,
                         BLOCK_R1, DOT_PRECISION)
        if HAS_BIAS:
            h += tl.load(bias_ptr + t, mask=t_ok, other=0.0).to(tl.float32)[None, :]
        if RELU:
            h = tl.maximum(h, 0.0)
        best = tl.maximum(best, h)
    return best


@triton.autotune(
    configs=_configs(),
    key=["P", "R1", "R2", "T", "C_OUT", "KH", "KW"],
    prune_configs_by={"early_config_prune": make_pruner(
        {"BLOCK_R": "R2", "BLOCK_R1": "R1", "BLOCK_T": "T", "BLOCK_N": "C_OUT"})},
)
@triton.jit
def _rank_bridge_kernel(
    u_ptr, w_sp_ptr, w_last_ptr, bias_ptr, w_next_ptr, out_ptr,
    P, R1, R2, T, C_OUT, H, W, HP, WP,
    su_n, su_c, su_h, su_w, so_n, so_c, so_h, so_w,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    KH: tl.constexpr, KW: tl.constexpr, DEPTHWISE: tl.constexpr, HAS_LAST: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_NEXT: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_p, pid_n = tile_ids(C_OUT, BLOCK_N)
    n, ph, pw, pix_ok = output_pixels(pid_p, P, HP, WP, BLOCK_P)
    n_off = n.to(tl.int64) * su_n
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    oc_ok = oc < C_OUT
    if HAS_NEXT:  # out (BLOCK_P, BLOCK_N) = sum over T chunks of layer_out(chunk) @ w_next[oc, chunk]^T
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_ok = t < T
            h = _layer_out(u_ptr, w_sp_ptr, w_last_ptr, bias_ptr, n_off, ph, pw, pix_ok, t, t_ok, R1, R2, H, W,
                           su_c, su_h, su_w, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, KH, KW, DEPTHWISE,
                           HAS_LAST, HAS_BIAS, RELU, POOL, BLOCK_P, BLOCK_R, BLOCK_R1, BLOCK_T, DOT_PRECISION)
            wn = tl.load(w_next_ptr + oc[None, :] * T + t[:, None], mask=t_ok[:, None] & oc_ok[None, :],
                         other=0.0)  # (BLOCK_T, BLOCK_N)
            acc = mma(h.to(wn.dtype), wn, acc, DOT_PRECISION)
    else:  # a run's tail: the output channels are layer i's own
        acc = _layer_out(u_ptr, w_sp_ptr, w_last_ptr, bias_ptr, n_off, ph, pw, pix_ok, oc, oc_ok, R1, R2, H, W,
                         su_c, su_h, su_w, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, KH, KW, DEPTHWISE,
                         HAS_LAST, HAS_BIAS, RELU, POOL, BLOCK_P, BLOCK_R, BLOCK_R1, BLOCK_N, DOT_PRECISION)
    pix = n.to(tl.int64) * so_n + ph.to(tl.int64) * so_h + pw.to(tl.int64) * so_w
    tl.store(out_ptr + pix[:, None] + oc[None, :].to(tl.int64) * so_c, acc.to(out_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & oc_ok[None, :])


def rank_bridge(x: torch.Tensor, spatial, w_last: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                w_next: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1, relu: bool = False,
                pool: bool = False, *, allow_tf32: Optional[bool] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The bridge on CUDA (or CPU under ``TRITON_INTERPRET=1``); arguments as ``torch.ops.mtd.rank_bridge``."""
    call = bridge.parse((x, spatial, w_last, bias, w_next, stride, padding, dilation, relu, pool))
    shape = bridge.output_shape(call)  # the ValueErrors every backend raises
    check_launch(bridge.NAME, x)
    out = prepare_output(bridge.NAME, x, shape, out)
    if out.numel() == 0:
        return out
    c = x.shape[1]
    if len(call.spatial) == 2:  # CP4: the depthwise kernel that is the pair's outer product
        w_sp, depthwise = (call.spatial[0] * call.spatial[1]).contiguous(), True
    else:
        w_sp = call.spatial[0].contiguous()
        depthwise = w_sp.shape[1] == 1 and w_sp.shape[0] == c and c > 1
    r2 = w_sp.shape[0]
    t = call.w_last.shape[0] if call.w_last is not None else r2
    n, _, h, w = x.shape
    c_out, hp, wp = shape[1], shape[2], shape[3]
    p = n * hp * wp
    dummy = out  # pointer for absent tensors (never read: the flags say so)
    grid = lambda meta: (triton.cdiv(p, meta["BLOCK_P"]) * triton.cdiv(c_out, meta["BLOCK_N"]),)  # noqa: E731
    with device_guard(x):
        _rank_bridge_kernel[grid](
            x, w_sp, *(v.contiguous() if v is not None else dummy for v in (call.w_last, call.bias, call.w_next)),
            out, p, c, r2, t, c_out, h, w, hp, wp, *stride_args(x), *stride_args(out),
            *call.stride, *call.padding, *call.dilation,
            KH=w_sp.shape[2], KW=w_sp.shape[3], DEPTHWISE=depthwise, HAS_LAST=call.w_last is not None,
            HAS_BIAS=call.bias is not None, HAS_NEXT=call.w_next is not None, RELU=call.relu, POOL=call.pool,
            DOT_PRECISION=dot_precision(x, allow_tf32),
        )
    return out
