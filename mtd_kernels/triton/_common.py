"""What the three fused Triton kernels share: the on-chip first pointwise stage, the epilogue,
autotune configs and the one launcher (:func:`launch`).

Design (the same for every op): a program owns BLOCK_P output pixels (flattened over batch and
output rows/columns) x BLOCK_T output channels.  For each tap of the spatial filter it recomputes
the first 1x1 conv on the input pixels that tap reads, ``x (BLOCK_P, S) @ w_first^T (S, BLOCK_R)``
with ``tl.dot``, and folds it straight into the rank-R intermediate of its own output pixels, so the
intermediate never leaves registers and no halo bookkeeping is needed.  The price is kh*kw first
GEMMs (S x R MACs per pixel each) instead of one, traded against never writing the intermediates to
memory; keeping the halo's intermediate in shared memory is the known next step.  The tap loop is
a runtime loop, not ``tl.static_range``: unrolled, the per-tap offsets and masks were hoisted and
spilled (ptxas for sm_90 reported 1.5-14 KB of spills per config; now 0-112 bytes for the default).

Rules the GPU enforces and the interpreter does not: block sizes are powers of two; every
``tl.dot`` has M, N >= 16 and K >= 16, so S, R and T blocks are padded up to >= 16 and masked;
both dot operands share a dtype (the fp32 intermediates are cast to the input dtype first).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..ops import OpSpec
from ..ops._chain import wants_channels_last

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_DOT_BLOCK = 16


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# --------------------------------------------------------------------------------------- device code

# DOT_PRECISION value that makes ``mma`` upcast both operands to fp32: only for bf16 under the
# interpreter, whose ``tl.dot`` multiplies the raw bf16 bit patterns (triton 3.9).  bf16 products
# are exact in fp32, so this matches a bf16 MMA with fp32 accumulation up to summation order.
UPCAST_TO_FP32 = "upcast_ieee"


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation (``tl.dot``; a and b share a dtype)."""
    if DOT_PRECISION == "upcast_ieee":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def first_pointwise_at(x_ptr, w_first_ptr, x_batch_off, hi, wi, pix_ok, r, r_ok, S, H, W,
                       stride_xc, stride_xh, stride_xw,
                       BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
                       DOT_PRECISION: tl.constexpr):
    """(BLOCK_P, BLOCK_R) fp32: ``sum_s x[n, s, hi, wi] * w_first[r, s]``, zero outside the image.

    Zero outside the image is exactly the zero padding of the intermediate, because the first
    stage has no bias.  ``w_first`` is contiguous (R, S).
    """
    inside = pix_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)  # (BLOCK_P,)
    pix_off = x_batch_off + hi.to(tl.int64) * stride_xh + wi.to(tl.int64) * stride_xw
    y = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < S
        x = tl.load(x_ptr + pix_off[:, None] + s[None, :] * stride_xc,
                    mask=inside[:, None] & s_ok[None, :], other=0.0)  # (BLOCK_P, BLOCK_S)
        w = tl.load(w_first_ptr + r[None, :] * S + s[:, None],
                    mask=s_ok[:, None] & r_ok[None, :], other=0.0)  # (BLOCK_S, BLOCK_R)
        y = mma(x, w, y, DOT_PRECISION)
    return y


@triton.jit
def last_pointwise(acc, z, w_last_ptr, r, r_ok, t, t_ok, R, DOT_PRECISION: tl.constexpr):
    """``acc (BLOCK_P, BLOCK_T) += z (BLOCK_P, BLOCK_R) @ w_last[t, r]^T``; ``w_last`` is contiguous (T, R)."""
    w = tl.load(w_last_ptr + t[None, :] * R + r[:, None],
                mask=r_ok[:, None] & t_ok[None, :], other=0.0)  # (BLOCK_R, BLOCK_T)
    return mma(z.to(w.dtype), w, acc, DOT_PRECISION)


@triton.jit
def store_output(acc, bias_ptr, out_ptr, n, ho, wo, pix_ok, t, t_ok,
                 stride_on, stride_oc, stride_oh, stride_ow,
                 HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Epilogue: + bias, ReLU, cast to the output dtype, masked strided store."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + t, mask=t_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    pix_off = n.to(tl.int64) * stride_on + ho.to(tl.int64) * stride_oh + wo.to(tl.int64) * stride_ow
    ptrs = out_ptr + pix_off[:, None] + t[None, :].to(tl.int64) * stride_oc
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=pix_ok[:, None] & t_ok[None, :])


@triton.jit
def tile_ids(T, BLOCK_T: tl.constexpr):
    """(pixel tile, channel tile) of this program in the 1-D grid, channel tiles fastest.

    Programs that share a pixel tile (and so read the same input pixels) run next to each other
    and hit the input in L2; a 1-D grid also has no 65535 limit on the number of pixel tiles.
    """
    num_t_tiles = tl.cdiv(T, BLOCK_T)
    pid = tl.program_id(0)
    return pid // num_t_tiles, pid % num_t_tiles


@triton.jit
def output_pixels(pid, P, HO, WO, BLOCK_P: tl.constexpr):
    """The program's BLOCK_P flattened output pixels as (n, ho, wo, in-range mask)."""
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = p < P
    n = p // (HO * WO)
    rem = p % (HO * WO)
    return n, rem // WO, rem % WO, pix_ok


# ----------------------------------------------------------------------------------- autotune configs

# (BLOCK_P, BLOCK_S, BLOCK_R, BLOCK_T, num_warps, num_stages); R blocks double as R1/R2 for Tucker.
# Kept to tiles that ptxas (sm_90, fp16, 3x3) compiles with no or small (<= 240 B) register spills;
# 128x128 output tiles and 3 stages spilled 0.5-1 KB and were dropped.
_GPU_TILES = [
    (64, 32, 32, 64, 4, 1),  # first = the config used when autotuning is off
    (32, 32, 16, 64, 4, 2),
    (64, 32, 32, 64, 4, 2),
    (128, 32, 32, 64, 8, 2),
    (64, 32, 32, 128, 8, 1),
    (64, 64, 64, 128, 8, 2),
    (128, 32, 64, 64, 8, 2),
]
# The interpreter costs ~tens of ms per program and per op: one small config, no benchmarking.
_INTERPRETER_TILE = (16, 16, 16, 16, 1, 1)


def make_configs(rank_names: Sequence[str]) -> List[triton.Config]:
    """Autotune configs; ``rank_names`` are the kernel's rank block names (``BLOCK_R`` or R1/R2)."""
    tiles = [_INTERPRETER_TILE] if interpreting() else _GPU_TILES
    configs = []
    for bp, bs, br, bt, warps, stages in tiles:
        kwargs = {"BLOCK_P": bp, "BLOCK_S": bs, "BLOCK_T": bt, **{name: br for name in rank_names}}
        configs.append(triton.Config(kwargs, num_warps=warps, num_stages=stages))
    return configs


def autotuning_enabled() -> bool:
    """``MTD_TRITON_AUTOTUNE=0`` runs the first (size-clamped) config instead of benchmarking all.

    Read at every new shape, so tests can switch it on and off at run time.
    """
    return os.environ.get("MTD_TRITON_AUTOTUNE", "1").lower() not in ("0", "false", "off", "no")


def _block_cap(size: int) -> int:
    return max(MIN_DOT_BLOCK, triton.next_power_of_2(int(size)))


def make_pruner(size_of_block: Dict[str, str]):
    """An ``early_config_prune`` that shrinks each block to the padded problem size and dedupes.

    ``size_of_block`` maps a block name to the kernel argument it tiles, e.g. ``{"BLOCK_R": "R"}``.
    """

    def prune(configs: List[triton.Config], named_args: dict, **kwargs) -> List[triton.Config]:
        seen, out = set(), []
        for cfg in configs:
            new = dict(cfg.kwargs)
            for block, size_arg in size_of_block.items():
                new[block] = min(new[block], _block_cap(named_args[size_arg]))
            key = (tuple(sorted(new.items())), cfg.num_warps, cfg.num_stages)
            if key not in seen:
                seen.add(key)
                out.append(triton.Config(new, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        return out if autotuning_enabled() else out[:1]

    return prune


# ------------------------------------------------------------------------------------ launcher side


def check_launch(op: str, x: torch.Tensor) -> None:
    """Triton-specific checks (the op's own shape checks run before this); ValueError like every check."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"mtd.triton.{op}: dtype {x.dtype} is not supported; use float32, float16 or bfloat16")
    if not x.is_cuda and not interpreting():
        raise ValueError(
            f"mtd.triton.{op}: needs CUDA tensors (got {x.device}); set TRITON_INTERPRET=1 before "
            "importing triton to run the kernels on CPU tensors"
        )


def dot_precision(x: torch.Tensor, allow_tf32: Optional[bool]) -> str:
    """``tl.dot`` input precision: only fp32 cares; tf32 follows torch's matmul setting unless given."""
    if x.dtype == torch.bfloat16 and interpreting():
        return UPCAST_TO_FP32
    if x.dtype != torch.float32:
        return "tf32"  # ignored for 16-bit operands (the compiler's default value)
    if allow_tf32 is None:
        allow_tf32 = torch_allows_tf32()
    return "tf32" if allow_tf32 else "ieee"


def torch_allows_tf32() -> bool:
    """torch's fp32 matmul setting: the ``fp32_precision`` API where set, else ``allow_tf32``."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    if precision != "none":
        return precision == "tf32"
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # the legacy and new APIs were mixed: torch refuses the legacy read
        return torch.get_float32_matmul_precision() != "highest"


def prepare_output(op: str, x: torch.Tensor, shape: Tuple[int, int, int, int],
                   out: Optional[torch.Tensor]) -> torch.Tensor:
    """The op's output (the layout rule of :func:`wants_channels_last`), or the caller's ``out`` after checks.

    ``out`` may have any strides (tests use a view into a NaN-poisoned buffer to check the masks).
    """
    if out is None:
        fmt = torch.channels_last if wants_channels_last(x) else torch.contiguous_format
        return x.new_empty(shape).contiguous(memory_format=fmt)
    if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"mtd.triton.{op}: out must have shape {shape}, dtype {x.dtype} and device {x.device}; "
            f"got {tuple(out.shape)}, {out.dtype}, {out.device}"
        )
    return out


def device_guard(x: torch.Tensor) -> ContextManager:
    """Launch on the input's GPU (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def stride_args(t: torch.Tensor) -> Tuple[int, int, int, int]:
    return tuple(int(s) for s in t.stride())  # type: ignore[return-value]


# (weights) -> (rank sizes in the kernel's argument order, (kh, kw) of the spatial stage)
SizesOf = Callable[[List[torch.Tensor]], Tuple[Tuple[int, ...], Tuple[int, int]]]


def launch(spec: OpSpec, kernel, args: tuple, sizes_of: SizesOf, allow_tf32: Optional[bool],
           out: Optional[torch.Tensor]) -> torch.Tensor:
    """The one launcher of the three kernels: checks, output, grid and the shared argument layout.

    ``args`` are the op's arguments ``(x, *weights, bias, stride, padding, dilation, relu)``.  Every
    kernel takes ``(x, *weights, bias, out, P, S, *ranks, T, H, W, HO, WO, x strides, out strides,
    stride/padding/dilation, KH, KW, HAS_BIAS, RELU, DOT_PRECISION)``.
    """
    call = spec.parse(args)
    shape = spec.validate(call)  # the ValueErrors every backend raises
    x = call.x
    check_launch(spec.name, x)
    out = prepare_output(spec.name, x, shape, out)
    if out.numel() == 0:
        return out
    ranks, (kh, kw) = sizes_of(call.weights)
    n, s, h, w = x.shape
    t, ho, wo = shape[1], shape[2], shape[3]
    p = n * ho * wo
    grid = lambda meta: (triton.cdiv(p, meta["BLOCK_P"]) * triton.cdiv(t, meta["BLOCK_T"]),)  # noqa: E731
    with device_guard(x):
        kernel[grid](
            x, *(wt.contiguous() for wt in call.weights),
            call.bias.contiguous() if call.bias is not None else out, out,
            p, s, *ranks, t, h, w, ho, wo,
            *stride_args(x), *stride_args(out),
            *call.stride, *call.padding, *call.dilation,
            KH=kh, KW=kw, HAS_BIAS=call.bias is not None, RELU=call.relu,
            DOT_PRECISION=dot_precision(x, allow_tf32),
        )
    return out
