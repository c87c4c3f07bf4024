"""The compiled CPU kernels of torch.ops.mtd (cp_conv2d, cp4_conv2d, tucker_conv2d).

Each op is checked against two independent references: the unfused chain of F.conv2d calls
(mtd_kernels.reference) and one dense conv with the weight reconstructed from the factors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

import mtd_kernels
from mtd_kernels import reference

# max |fused - reference| / max(1, max |reference|)
TOL_CHAIN = {torch.float32: 2e-5, torch.float64: 1e-12}
TOL_DENSE = {torch.float32: 1e-4, torch.float64: 1e-11}


@dataclass(frozen=True)
class Geometry:
    n: int
    s: int
    r: int
    t: int
    k: Tuple[int, int]
    hw: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    bias: bool = True
    relu: bool = False


GEOMETRIES = [
    Geometry(1, 3, 5, 17, (3, 3), (9, 7), padding=(1, 1)),
    Geometry(7, 17, 1, 3, (3, 3), (11, 13), stride=(2, 2), relu=True),
    Geometry(1, 64, 70, 64, (5, 5), (9, 11), padding=(2, 2), bias=False, relu=True),
    Geometry(7, 17, 5, 64, (1, 1), (5, 7)),
    Geometry(1, 3, 40, 17, (1, 3), (7, 9), stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
    Geometry(2, 17, 33, 5, (3, 3), (13, 9), stride=(1, 2), padding=(2, 0), dilation=(2, 2), relu=True),
    Geometry(1, 5, 3, 7, (5, 5), (3, 4), padding=(2, 2)),  # padding wider than the image rows
    Geometry(7, 17, 20, 9, (3, 3), (2, 3), padding=(1, 1), relu=True),  # tiny maps: images grouped per task
    Geometry(1, 24, 40, 33, (3, 3), (4, 4), padding=(1, 1)),  # one small map: channels split over threads
    Geometry(8, 6, 10, 5, (3, 3), (6, 5), stride=(2, 2)),  # grouped tiny maps whose last input row is unused
    # rows of 8+ output pixels and 256+ in the call: Tucker's core without im2col (padded input rows)
    Geometry(3, 8, 6, 24, (3, 3), (16, 12), padding=(1, 1), relu=True),
    Geometry(4, 10, 7, 12, (5, 3), (21, 19), stride=(2, 2), padding=(2, 1)),
]


# ---- factors and the dense weight they represent -------------------------------------------------
def make_factors(op: str, g: Geometry, dtype: torch.dtype, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    kh, kw = g.k
    if op == "cp_conv2d":
        return rnd(g.r, g.s, 1, 1), rnd(g.r, 1, kh, kw), rnd(g.t, g.r, 1, 1)
    if op == "cp4_conv2d":
        return rnd(g.r, g.s, 1, 1), rnd(g.r, 1, kh, 1), rnd(g.r, 1, 1, kw), rnd(g.t, g.r, 1, 1)
    r2 = g.r + 2  # distinct R1 != R2
    return rnd(g.r, g.s, 1, 1), rnd(r2, g.r, kh, kw), rnd(g.t, r2, 1, 1)


def dense_weight(op: str, factors) -> torch.Tensor:
    """(T, S, kh, kw) weight equal to the op's chain (independent of the chain code)."""
    if op == "cp_conv2d":
        wf, wd, wl = factors
        return torch.einsum("tr,rij,rs->tsij", wl[:, :, 0, 0], wd[:, 0], wf[:, :, 0, 0])
    if op == "cp4_conv2d":
        wf, wv, wh, wl = factors
        return torch.einsum("tr,ri,rj,rs->tsij", wl[:, :, 0, 0], wv[:, 0, :, 0], wh[:, 0, 0, :], wf[:, :, 0, 0])
    wf, wc, wl = factors
    return torch.einsum("tb,baij,as->tsij", wl[:, :, 0, 0], wc, wf[:, :, 0, 0])


OPS: Dict[str, Tuple[Callable, Callable]] = {
    "cp_conv2d": (mtd_kernels.cp_conv2d, reference.cp_conv2d_ref),
    "cp4_conv2d": (mtd_kernels.cp4_conv2d, reference.cp4_conv2d_ref),
    "tucker_conv2d": (mtd_kernels.tucker_conv2d, reference.tucker_conv2d_ref),
}


def make_input(g: Geometry, dtype: torch.dtype, layout: str, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if layout == "view":  # a strided view that is neither NCHW- nor channels_last-contiguous
        big = torch.randn(g.n, g.s, g.hw[0], 2 * g.hw[1], generator=gen, dtype=dtype)
        x = big[..., ::2]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
        return x
    x = torch.randn(g.n, g.s, *g.hw, generator=gen, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def expected_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@pytest.fixture(autouse=True)
def _fused_path(monkeypatch):
    """These tests are about the fused kernels: no per-shape choice of the chain (test_kernel_dispatch.py)."""
    monkeypatch.setenv("MTD_CPU_PATH", "fused")


def test_extension_is_loaded():
    assert mtd_kernels.extension_available(), mtd_kernels.extension_error()


# ---- forward correctness ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "view"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: f"n{g.n}s{g.s}r{g.r}t{g.t}k{g.k[0]}x{g.k[1]}")
@pytest.mark.parametrize("op", list(OPS))
def test_matches_chain_and_dense(op: str, g: Geometry, dtype: torch.dtype, layout: str):
    fused, ref = OPS[op]
    factors = make_factors(op, g, dtype)
    x = make_input(g, dtype, layout)
    bias = torch.randn(g.t, generator=torch.Generator().manual_seed(2), dtype=dtype) if g.bias else None
    geo = dict(stride=g.stride, padding=g.padding, dilation=g.dilation, relu=g.relu)

    out = fused(x, *factors, bias, **geo)
    want = ref(x, *factors, bias, **geo)
    assert out.shape == want.shape and out.dtype == dtype
    assert rel_err(out, want) <= TOL_CHAIN[dtype]

    dense = F.conv2d(x, dense_weight(op, factors), bias, g.stride, g.padding, g.dilation)
    if g.relu:
        dense = torch.relu(dense)
    assert rel_err(out, dense) <= TOL_DENSE[dtype]

    # layout rule: channels_last out iff the input is channels_last-contiguous and not contiguous
    cl = expected_channels_last(x)
    assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("op", list(OPS))
def test_large_tile_split_and_single_thread(op: str):
    """Rows split into many L2-sized chunks (and the same result on 1 thread)."""
    g = Geometry(2, 64, 300, 48, (3, 3), (40, 36), padding=(1, 1), relu=True)
    factors = make_factors(op, g, torch.float32)
    x = make_input(g, torch.float32, "channels_last")
    bias = torch.randn(g.t, generator=torch.Generator().manual_seed(3))
    fused, ref = OPS[op]
    out = fused(x, *factors, bias, padding=1, relu=True)
    assert rel_err(out, ref(x, *factors, bias, padding=1, relu=True)) <= TOL_CHAIN[torch.float32]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1 = fused(x[:1].contiguous(), *factors, bias, padding=1, relu=True)
    finally:
        torch.set_num_threads(threads)
    assert rel_err(out1, out[:1]) <= TOL_CHAIN[torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", list(OPS))
def test_low_precision_falls_back_to_chain(op: str, dtype: torch.dtype):
    g = Geometry(2, 8, 6, 8, (3, 3), (7, 7), padding=(1, 1), relu=True)
    factors = make_factors(op, g, dtype)
    x = make_input(g, dtype, "channels_last")
    bias = torch.randn(g.t, dtype=dtype)
    fused, ref = OPS[op]
    out = fused(x, *factors, bias, padding=1, relu=True)
    want = ref(*(t.float() for t in (x, *factors, bias)), padding=1, relu=True)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out.float(), want) <= 5e-2


def test_empty_batch():
    g = Geometry(0, 4, 3, 5, (3, 3), (6, 6), padding=(1, 1))
    out = mtd_kernels.cp_conv2d(make_input(g, torch.float32, "nchw"), *make_factors("cp_conv2d", g, torch.float32),
                                padding=1)
    assert out.shape == (0, 5, 6, 6)


# ---- torch.library / autograd / compile ------------------------------------------------------------
def op_args(op: str, g: Geometry, dtype: torch.dtype, requires_grad: bool = False):
    factors = make_factors(op, g, dtype)
    x = make_input(g, dtype, "nchw")
    bias = torch.randn(g.t, dtype=dtype, generator=torch.Generator().manual_seed(4))
    tensors = [t.clone().requires_grad_(requires_grad) for t in (x, *factors, bias)]
    return (*tensors, list(g.stride), list(g.padding), list(g.dilation), g.relu)


OPCHECK_GEOMETRIES = [
    Geometry(2, 3, 4, 5, (3, 3), (6, 5), padding=(1, 1), relu=True),
    Geometry(1, 4, 2, 3, (1, 3), (5, 7), stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
]


@pytest.mark.parametrize("g", OPCHECK_GEOMETRIES, ids=["3x3", "1x3-strided"])
@pytest.mark.parametrize("op", list(OPS))
def test_opcheck(op: str, g: Geometry):
    torch.library.opcheck(getattr(torch.ops.mtd, op).default, op_args(op, g, torch.float32, requires_grad=True))


@pytest.mark.parametrize("op", list(OPS))
def test_gradcheck_fp64(op: str):
    g = Geometry(1, 3, 2, 3, (3, 3), (5, 4), stride=(2, 1), padding=(1, 1), relu=False)
    args = op_args(op, g, torch.float64, requires_grad=True)
    n_tensors = 2 + len(make_factors(op, g, torch.float64))
    fn = lambda *tensors: getattr(torch.ops.mtd, op)(*tensors, *args[n_tensors:])  # noqa: E731
    assert torch.autograd.gradcheck(fn, args[:n_tensors])


def test_torch_compile_fullgraph():
    g = Geometry(2, 4, 3, 6, (3, 3), (7, 6), padding=(1, 1))
    cp = make_factors("cp_conv2d", g, torch.float32)
    cp4 = make_factors("cp4_conv2d", Geometry(2, 6, 3, 5, (3, 3), (7, 6)), torch.float32)
    tk = make_factors("tucker_conv2d", Geometry(2, 5, 2, 4, (3, 3), (7, 6)), torch.float32)

    def block(x):
        y = mtd_kernels.cp_conv2d(x, *cp, padding=1, relu=True)
        y = mtd_kernels.cp4_conv2d(y, *cp4, padding=1, relu=True)
        return mtd_kernels.tucker_conv2d(y, *tk, stride=2, padding=1)

    x = make_input(g, torch.float32, "nchw")
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), block(x))


# ---- clear errors ------------------------------------------------------------------------------------
def _bad_cases():
    g = Geometry(1, 4, 3, 5, (3, 3), (6, 6))
    x = make_input(g, torch.float32, "nchw")
    wf, wd, wl = make_factors("cp_conv2d", g, torch.float32)
    ok = dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1])

    def call(x=x, wf=wf, wd=wd, wl=wl, bias=None, stride=ok["stride"], padding=ok["padding"], dilation=ok["dilation"]):
        return lambda: torch.ops.mtd.cp_conv2d(x, wf, wd, wl, bias, stride, padding, dilation, False)

    return {
        "channels": (call(x=torch.randn(1, 5, 6, 6)), "channels"),
        "ranks": (call(wd=torch.randn(4, 1, 3, 3)), "do not chain"),
        "dtype": (call(wf=wf.double()), "dtype"),
        "3d-input": (call(x=x[0]), "4-D"),
        "negative-padding": (call(padding=[-1, 0]), "padding >= 0"),
        "too-small": (call(x=torch.randn(1, 4, 2, 6)), "too small"),
        # H=2 < k=3 at stride 2: floor((2 - 3) / 2) + 1 = 0 rows (truncating toward zero would give 1)
        "too-small-strided": (call(x=torch.randn(1, 4, 2, 6), stride=[2, 2]), "too small"),
        "bias-shape": (call(bias=torch.randn(4)), "bias"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_clear_errors(case: str):
    fn, match = _bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        fn()


def test_tucker_and_cp4_rank_errors():
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match="do not chain"):
        mtd_kernels.tucker_conv2d(x, torch.randn(3, 4, 1, 1), torch.randn(2, 5, 3, 3), torch.randn(5, 2, 1, 1))
    with pytest.raises(ValueError, match="do not chain"):
        mtd_kernels.cp4_conv2d(x, torch.randn(3, 4, 1, 1), torch.randn(3, 1, 3, 1), torch.randn(3, 1, 3, 1),
                               torch.randn(5, 3, 1, 1))
