"""Shared by the GPU-kernel tests (Triton interpreter, CUDA device): the test case, its inputs, the
float64 reference and the tolerance check, so both files test the kernels the same way."""
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
