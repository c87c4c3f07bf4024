"""Shared by the kernel tests (CPU, Triton interpreter, CUDA device): the test cases, their inputs, the
float64 reference and the tolerance check, so every backend is tested the same way. ``Case`` is for the
chain ops, ``BridgeCase`` for ``rank_bridge``, ``RUN_CASES`` (chains of bridges) for ``rank_run``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from mtd_kernels import reference

OPS = ("cp_conv2d", "cp4_conv2d", "tucker_conv2d")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    n: int
    s: int
    hw: Tuple[int, int]
    r: int
    t: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    layout: str = "nchw"  # nchw | channels_last | strided (a non-contiguous view)
    bias: bool = True
    relu: bool = False

    def __str__(self) -> str:
        return f"n{self.n}s{self.s}r{self.r}t{self.t}k{self.kernel[0]}x{self.kernel[1]}-{self.layout}"


def factor_shapes(op: str, c: Case):
    kh, kw = c.kernel
    if op == "cp_conv2d":
        return [(c.r, c.s, 1, 1), (c.r, 1, kh, kw), (c.t, c.r, 1, 1)]
    if op == "cp4_conv2d":
        return [(c.r, c.s, 1, 1), (c.r, 1, kh, 1), (c.r, 1, 1, kw), (c.t, c.r, 1, 1)]
    r2 = c.r + 2  # R1 != R2 catches swapped core indices
    return [(c.r, c.s, 1, 1), (r2, c.r, kh, kw), (c.t, r2, 1, 1)]


def make_inputs(op: str, c: Case, dtype: torch.dtype, seed: int = 0, device: str = "cpu"):
    """(x, weights, bias) drawn on the CPU (same values on every device), then moved and cast."""
    g = torch.Generator().manual_seed(seed)
    if c.layout == "strided":  # every other column of a wider tensor: no contiguous layout at all
        x = torch.randn(c.n, c.s, c.hw[0], 2 * c.hw[1], generator=g).to(device)[..., ::2]
    else:
        x = torch.randn(c.n, c.s, *c.hw, generator=g).to(device)
        if c.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    weights = [(torch.randn(*shape, generator=g) / shape[1] ** 0.5).to(device) for shape in factor_shapes(op, c)]
    bias = torch.randn(c.t, generator=g).to(device) if c.bias else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(x), [cast(w) for w in weights], cast(bias)


def reference_output(op: str, x, weights, bias, c: Case) -> torch.Tensor:
    """The unfused chain in float64 on the CPU, on the same (rounded) inputs."""
    as64 = lambda t: None if t is None else t.detach().cpu().double()  # noqa: E731
    return getattr(reference, f"{op}_ref")(as64(x), *[as64(w) for w in weights], as64(bias),
                                           c.stride, c.padding, c.dilation, c.relu)


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """max |err| <= tol * max|ref| + tol * |ref|, and every output written (finite)."""
    assert tuple(out.shape) == tuple(ref.shape)
    out = out.detach().cpu().double()
    assert torch.isfinite(out).all(), "the kernel left unwritten (NaN/garbage) or non-finite outputs"
    err = (out - ref).abs()
    bound = tol * ref.abs().max().clamp_min(1.0) + tol * ref.abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"max abs error {err.max().item():.3e} exceeds tolerance {tol:g} (by {worst:.3e})"


# ---- rank_bridge ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BridgeCase:
    kind: str  # depthwise | cp4 | tucker | dense (the spatial stage is the layer: no w_last)
    n: int
    r1: int
    hw: Tuple[int, int]
    t: int
    r_next: int = 0  # 0: no w_next (a run's tail)
    pool: bool = True
    relu: bool = True
    bias: bool = True
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    kernel: Tuple[int, int] = (3, 3)

    def __str__(self) -> str:
        return (f"{self.kind}-n{self.n}r{self.r1}t{self.t}x{self.r_next}-{self.hw[0]}x{self.hw[1]}"
                f"{'-pool' if self.pool else ''}{'' if self.relu else '-norelu'}{'' if self.bias else '-nobias'}")


# Small first (the Triton interpreter runs BRIDGE_CASES[:6]); the others reach every CPU tiling branch.
BRIDGE_CASES = [
    BridgeCase("depthwise", 2, 8, (9, 7), 12, 5),  # odd map: the pool drops a row and a column
    BridgeCase("cp4", 2, 8, (9, 7), 12, 5, stride=(2, 1), padding=(2, 1), dilation=(2, 1)),
    BridgeCase("tucker", 2, 8, (8, 8), 12, 5, pool=False, bias=False),
    BridgeCase("dense", 3, 3, (10, 10), 16, 6),  # a network's first conv: the image is the input
    BridgeCase("depthwise", 1, 20, (6, 5), 9, 0, pool=False, relu=False),  # the tail: T channels out
    BridgeCase("tucker", 1, 6, (10, 6), 33, 0),  # the tail, pooled
    BridgeCase("depthwise", 3, 40, (32, 32), 200, 30),  # row chunks, several T chunks
    BridgeCase("cp4", 1, 20, (33, 31), 300, 17, padding=(2, 2)),  # 1 image, many row chunks
    BridgeCase("tucker", 64, 16, (2, 2), 520, 16),  # tiny maps: several images per task, 1x1 pooled output
    BridgeCase("dense", 7, 12, (4, 6), 40, 0, pool=False),  # dense between rank-space layers: T in, T out
    # the tail written straight out by the packed small GEMM; 17 channels end on an overlapping vector
    BridgeCase("depthwise", 2, 17, (16, 16), 40, 0, pool=False),
    # the Tucker core and a dense conv without im2col (rows of 8+ output pixels, the core packed): low ranks at high
    # resolution, a first conv's 3 channels, strides, a 5x3 kernel with unequal padding, 1x5, an odd pooled map
    BridgeCase("tucker", 4, 6, (16, 16), 24, 5),
    BridgeCase("dense", 1, 3, (32, 32), 16, 6),
    BridgeCase("tucker", 4, 5, (18, 20), 20, 7, stride=(2, 2), padding=(2, 1), kernel=(5, 3)),
    BridgeCase("tucker", 3, 4, (9, 24), 12, 0, pool=False, padding=(0, 2), kernel=(1, 5)),
    BridgeCase("dense", 2, 7, (15, 13), 19, 5, stride=(1, 2), padding=(0, 1)),
]


def make_bridge_args(c: BridgeCase, dtype: torch.dtype, layout: str = "channels_last", seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) / max(1, shape[1]) ** 0.5).to(dtype)

    kh, kw = c.kernel
    if c.kind == "depthwise":
        spatial, r2 = [rnd(c.r1, 1, kh, kw)], c.r1
    elif c.kind == "cp4":
        spatial, r2 = [rnd(c.r1, 1, kh, 1), rnd(c.r1, 1, 1, kw)], c.r1
    else:
        r2 = c.t if c.kind == "dense" else c.r1 + 3  # R1 != R2 catches swapped core indices
        spatial = [rnd(r2, c.r1, kh, kw)]
    w_last = rnd(c.t, r2, 1, 1) if c.kind != "dense" else None
    bias = rnd(c.t, 1)[:, 0] if c.bias else None
    w_next = rnd(c.r_next, c.t, 1, 1) if c.r_next else None
    if layout == "view":
        x = torch.randn(c.n, c.r1, c.hw[0], 2 * c.hw[1], generator=gen, dtype=torch.float64).to(dtype)[..., ::2]
    else:
        x = torch.randn(c.n, c.r1, *c.hw, generator=gen, dtype=torch.float64).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return (x, spatial, w_last, bias, w_next, list(c.stride), list(c.padding), list(c.dilation), c.relu, c.pool)


def map_tensors(fn, args: tuple) -> tuple:
    """``args`` with ``fn`` applied to every tensor, also inside lists (the bridge's spatial factors)."""
    one = lambda a: fn(a) if isinstance(a, torch.Tensor) else a  # noqa: E731
    return tuple([one(v) for v in a] if isinstance(a, list) else one(a) for a in args)


def bridge_reference_output(args: tuple) -> torch.Tensor:
    """The bridge's plain-PyTorch stages in float64 on the CPU, on the same (rounded) inputs."""
    return reference.rank_bridge_ref(*map_tensors(lambda t: t.detach().cpu().double(), args))


# ---- rank_run: chains of bridges (each case's r1 is the previous one's output channels) ----------------
def _entry(r1: int, r: int) -> BridgeCase:
    """A run's entry: the first layer's first 1x1 as a dense 1x1 spatial stage (no last, bias, ReLU or pool)."""
    return BridgeCase("dense", 1, r1, (1, 1), r, 0, pool=False, relu=False, bias=False, padding=(0, 0),
                      kernel=(1, 1))


RUN_CASES = {
    # a VGG's start: the image into a dense conv, then every kind of spatial stage; odd maps, strides, pools
    "vgg-start": (2, (13, 11), [BridgeCase("dense", 1, 3, (1, 1), 16, 6),
                                BridgeCase("depthwise", 1, 6, (1, 1), 12, 5),
                                BridgeCase("tucker", 1, 5, (1, 1), 33, 7, pool=False, stride=(2, 1)),
                                BridgeCase("cp4", 1, 7, (1, 1), 12, 0, dilation=(1, 2), padding=(1, 2))]),
    # batch 1 on the tiny maps of a network's end: 4x4 -> 2x2 -> 1x1
    "batch1-tail": (1, (4, 4), [_entry(24, 17), BridgeCase("depthwise", 1, 17, (1, 1), 40, 9),
                                BridgeCase("tucker", 1, 9, (1, 1), 64, 0)]),
    # many images per task, T of several hundred
    "batch64": (64, (4, 4), [BridgeCase("depthwise", 1, 16, (1, 1), 64, 16, pool=False),
                             BridgeCase("tucker", 1, 16, (1, 1), 520, 16)]),
    # row chunks and several T chunks per task
    "rows": (3, (32, 32), [BridgeCase("depthwise", 1, 40, (1, 1), 200, 30),
                           BridgeCase("cp4", 1, 30, (1, 1), 50, 0, bias=False)]),
    # low ranks at high resolution: the first conv and a Tucker core without im2col, then one with (a 4-pixel row)
    "high-res": (2, (32, 32), [BridgeCase("dense", 1, 3, (1, 1), 16, 6),
                               BridgeCase("tucker", 1, 6, (1, 1), 24, 5),
                               BridgeCase("tucker", 1, 5, (1, 1), 20, 0, stride=(2, 2))]),
}


def make_run_args(name: str, dtype: torch.dtype, layout: str = "channels_last", seed: int = 0) -> tuple:
    """(input, weights, meta, []) of rank_run over RUN_CASES[name]."""
    from mtd_kernels.ops.rank_run import bridge_meta

    n, hw, bridges = RUN_CASES[name]
    weights, meta = [], []
    for i, c in enumerate(bridges):
        _, spatial, w_last, bias, w_next, stride, padding, dilation, relu, pool = make_bridge_args(c, dtype, seed=seed + i)
        weights += spatial + [t for t in (w_last, bias, w_next) if t is not None]
        meta += bridge_meta(len(spatial), w_last is not None, bias is not None, w_next is not None, stride, padding,
                            dilation, relu, pool)
    x = make_bridge_args(BridgeCase(bridges[0].kind, n, bridges[0].r1, hw, 1), dtype, layout, seed=seed + 100)[0]
    return (x, weights, meta, [])


def run_reference_output(args: tuple) -> torch.Tensor:
    """The run's plain-PyTorch bridges in float64 on the CPU, on the same (rounded) inputs."""
    return reference.rank_run_ref(*map_tensors(lambda t: t.detach().cpu().double(), args))
