"""The kernel layer's structure and choices: one-way imports, one argument check, the cached CUDA
backend choice, and the CPU op's measured choice between its fused kernel and the chain."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import mtd_kernels
from mtd_kernels import dispatch, reference
from mtd_kernels.ops import SPECS
from mtd_kernels.ops._chain import conv_out_size

PACKAGE = Path(mtd_kernels.__file__).resolve().parent


def _imported_modules(path: Path) -> set:
    """Absolute names of the mtd_kernels modules a file imports (at any depth, lazily or not)."""
    package = ["mtd_kernels", *path.relative_to(PACKAGE).parts[:-1]]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("mtd_kernels")}


# layer -> modules it must never import (the layers below it may not look up)
FORBIDDEN = {
    "ops": ("mtd_kernels.dispatch", "mtd_kernels._register", "mtd_kernels.triton", "mtd_kernels._loader"),
    "triton": ("mtd_kernels.dispatch", "mtd_kernels._register"),
    "dispatch.py": ("mtd_kernels._register",),
    "_loader.py": ("mtd_kernels.dispatch", "mtd_kernels._register", "mtd_kernels.triton"),
}


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_imports_are_one_way(layer):
    target = PACKAGE / layer
    files = sorted(target.glob("*.py")) if target.is_dir() else [target]
    assert files
    for path in files:
        bad = {m for m in _imported_modules(path) for f in FORBIDDEN[layer] if m == f or m.startswith(f + ".")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


# ---- one output-size formula and one argument check ---------------------------------------------------
@pytest.mark.parametrize("size,k,s,p,d", [(2, 3, 2, 0, 1), (2, 3, 1, 0, 1), (1, 5, 3, 1, 1), (7, 3, 2, 0, 2),
                                          (9, 3, 2, 1, 1), (4, 1, 3, 0, 1), (3, 3, 1, 0, 1)])
def test_conv_out_size_floors_like_torch(size, k, s, p, d):
    x = torch.zeros(1, 1, size, size)
    try:
        want = torch.nn.functional.conv2d(x, torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d).shape[2]
    except RuntimeError:  # torch refuses a non-positive output size
        want = None
    got = conv_out_size(size, k, s, p, d)
    assert (got if got >= 1 else None) == want


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_too_small_input_is_a_value_error_everywhere(device):
    """H=2, k=3, stride 2, padding 0 has no output row: the C++ CPU kernel and the fake kernel agree."""
    args = [torch.randn(1, 4, 2, 6), torch.randn(3, 4, 1, 1), torch.randn(3, 1, 3, 3), torch.randn(5, 3, 1, 1)]
    args = [a.to(device) for a in args]
    with pytest.raises(ValueError, match="too small"):
        torch.ops.mtd.cp_conv2d(*args, None, [2, 2], [0, 0], [1, 1], False)


# ---- the CUDA backend choice ---------------------------------------------------------------------
@pytest.fixture
def fake_backends(monkeypatch):
    """Stand-in kernels for both CUDA backends, counting how often the choice is rebuilt."""
    lookups = []

    def finder(name):
        def find(op):
            lookups.append((name, op))
            return lambda *args: (name, op)

        return find

    monkeypatch.setitem(dispatch._FINDERS, "triton", finder("triton"))
    monkeypatch.setitem(dispatch._FINDERS, "cuda", finder("cuda"))
    dispatch.resolve.cache_clear()
    yield lookups
    dispatch.set_cuda_backend(None)
    dispatch.resolve.cache_clear()


def test_cuda_choice_is_cached_per_backend_op_dtype(fake_backends):
    for _ in range(3):
        assert dispatch.cuda_kernel("cp_conv2d", torch.float16)() == ("triton", "cp_conv2d")
    assert fake_backends == [("triton", "cp_conv2d")]
    dispatch.set_cuda_backend("cuda")
    assert dispatch.cuda_kernel("cp_conv2d", torch.float16)() == ("cuda", "cp_conv2d")
    assert dispatch.cuda_kernel("tucker_conv2d", torch.bfloat16)() == ("cuda", "tucker_conv2d")
    assert len(fake_backends) == 3


def test_cuda_choice_falls_back_to_the_chain(fake_backends, monkeypatch):
    assert dispatch.cuda_kernel("cp_conv2d", torch.float64) is None  # no fused fp64 kernel
    dispatch.set_cuda_backend("torch")
    assert dispatch.cuda_kernel("cp_conv2d", torch.float32) is None
    dispatch.set_cuda_backend(None)
    monkeypatch.setitem(dispatch._FINDERS, "triton", lambda op: None)  # Triton unavailable: auto takes CUDA
    dispatch.resolve.cache_clear()
    assert dispatch.cuda_kernel("cp4_conv2d", torch.float32)() == ("cuda", "cp4_conv2d")
    with pytest.raises(ValueError, match="unknown CUDA backend"):
        dispatch.set_cuda_backend("tpu")
    monkeypatch.setenv("MTD_CUDA_BACKEND", "tpu")
    with pytest.raises(ValueError, match="MTD_CUDA_BACKEND"):
        dispatch.cuda_kernel("cp_conv2d")


@pytest.mark.parametrize("op", ["cp_conv2d", "rank_bridge"])
def test_cuda_entry_checks_each_call_once(fake_backends, op):
    """The CUDA entry leaves the check to the kernel it hands the call to (Triton's launcher and the CUDA
    kernels check their own arguments), and checks only the calls the chain runs."""
    from mtd_kernels import _register

    if op == "rank_bridge":
        entry = _register.bridge_cuda_entry
        x = torch.randn(1, 4, 6, 6)
        good = (x, [torch.randn(4, 1, 3, 3)], torch.randn(5, 4, 1, 1), None, None, [1, 1], [1, 1], [1, 1],
                True, False)
        want = reference.rank_bridge_ref(*good)
    else:
        entry = _register.cuda_entry(SPECS[op])
        x = torch.randn(1, 4, 6, 6)
        good = (x, torch.randn(3, 4, 1, 1), torch.randn(3, 1, 3, 3), torch.randn(5, 3, 1, 1), None,
                [1, 1], [1, 1], [1, 1], False)
        want = reference.cp_conv2d_ref(*good)
    bad = (torch.randn(1, 7, 6, 6), *good[1:])  # 7 input channels for factors made for 4
    assert entry(*bad) == ("triton", op)  # handed on unchecked: the kernel checks it
    dispatch.set_cuda_backend("torch")
    with pytest.raises(ValueError, match="channels"):
        entry(*bad)
    torch.testing.assert_close(entry(*good), want)


def test_cuda_kernels_names_and_their_old_aliases(fake_backends, monkeypatch):
    monkeypatch.setenv("MTD_CUDA_BACKEND", "tpu")  # the old name is read only when the new one is unset
    monkeypatch.setenv("MTD_CUDA_KERNELS", "cuda")
    assert dispatch.cuda_kernels() == dispatch.cuda_backend() == "cuda"
    assert dispatch.cuda_kernel("cp_conv2d", torch.float16)() == ("cuda", "cp_conv2d")
    monkeypatch.setenv("MTD_CUDA_KERNELS", "tpu")
    with pytest.raises(ValueError, match="MTD_CUDA_KERNELS='tpu'"):
        dispatch.cuda_kernels()
    mtd_kernels.set_cuda_kernels("torch")  # the setter overrides both variables
    assert mtd_kernels.cuda_backend() == "torch" and dispatch.set_cuda_backend is dispatch.set_cuda_kernels


# ---- the CPU op's per-shape choice between the fused kernel and the chain ------------------------------
def _cp_args(n=2, s=16, r=8, t=24, hw=(10, 9), channels_last=True):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, s, *hw, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = [torch.randn(r, s, 1, 1, generator=gen), torch.randn(r, 1, 3, 3, generator=gen),
               torch.randn(t, r, 1, 1, generator=gen)]
    return x, weights, torch.randn(t, generator=gen)


needs_extension = pytest.mark.skipif(not mtd_kernels.extension_available(), reason="compiled extension missing")


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setenv("MTD_CPU_PATH", "auto")
    mtd_kernels.clear_cpu_path_cache()
    yield
    mtd_kernels.clear_cpu_path_cache()


@needs_extension
def test_cpu_choice_is_measured_once_and_cached(fresh_cache):
    x, weights, bias = _cp_args()
    want = reference.cp_conv2d_ref(x, *weights, bias, padding=1, relu=True)
    with torch.no_grad():
        first = mtd_kernels.cp_conv2d(x, *weights, bias, padding=1, relu=True)
        cache = mtd_kernels.cpu_path_cache()
        assert len(cache) == 1 and set(cache.values()) <= {"fused", "chain"}
        (key,) = cache
        assert "cp_conv2d" in key and f"threads={torch.get_num_threads()}" in key
        again = mtd_kernels.cp_conv2d(x, *weights, bias, padding=1, relu=True)
        assert mtd_kernels.cpu_path_cache() == cache  # same shape: no new measurement
        mtd_kernels.cp_conv2d(x[:1], *weights, bias, padding=1, relu=True)  # another batch: its own entry
        mtd_kernels.cp_conv2d(x, *weights, bias, stride=2, padding=1, relu=True)  # another stride
    assert len(mtd_kernels.cpu_path_cache()) == 3
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, first)
    assert first.is_contiguous(memory_format=torch.channels_last)


@needs_extension
@pytest.mark.parametrize("op", list(SPECS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_paths_agree(op, channels_last, monkeypatch):
    x, (wf, _, wl), bias = _cp_args(channels_last=channels_last)
    r = wf.shape[0]
    middle = {"cp_conv2d": [torch.randn(r, 1, 3, 3)],
              "cp4_conv2d": [torch.randn(r, 1, 3, 1), torch.randn(r, 1, 1, 3)],
              "tucker_conv2d": [torch.randn(r, r, 3, 3)]}[op]
    args = (x, wf, *middle, wl, bias, [2, 1], [1, 1], [1, 1], True)
    outs = {}
    for path in ("fused", "chain"):
        monkeypatch.setenv("MTD_CPU_PATH", path)
        outs[path] = getattr(torch.ops.mtd, op)(*args)
    torch.testing.assert_close(outs["fused"], outs["chain"], rtol=1e-4, atol=1e-4)
    assert outs["fused"].stride() == outs["chain"].stride()  # the same layout rule on both paths
    torch.testing.assert_close(outs["fused"], SPECS[op].reference(*args), rtol=1e-4, atol=1e-4)


@needs_extension
def test_cpu_choice_not_measured_while_recording_gradients(fresh_cache):
    x, weights, bias = _cp_args()
    weights = [w.requires_grad_() for w in weights]
    out = mtd_kernels.cp_conv2d(x.requires_grad_(), *weights, bias, padding=1)
    out.sum().backward()
    assert mtd_kernels.cpu_path_cache() == {}
    with torch.no_grad():
        mtd_kernels.cp_conv2d(x.detach(), *weights, bias, padding=1)
    assert len(mtd_kernels.cpu_path_cache()) == 1


@needs_extension
def test_cpu_path_env_is_checked(monkeypatch):
    x, weights, bias = _cp_args()
    monkeypatch.setenv("MTD_CPU_PATH", "fastest")
    with pytest.raises(ValueError, match="MTD_CPU_PATH"):
        mtd_kernels.cp_conv2d(x, *weights, bias, padding=1)


@needs_extension
def test_cpu_kernels_env_wins_over_its_old_name(fresh_cache, monkeypatch):
    x, weights, bias = _cp_args()
    monkeypatch.setenv("MTD_CPU_PATH", "fastest")  # invalid, but not read: the new name is set
    monkeypatch.setenv("MTD_CPU_KERNELS", "chain")
    with torch.no_grad():
        out = mtd_kernels.cp_conv2d(x, *weights, bias, padding=1)
    torch.testing.assert_close(out, reference.cp_conv2d_ref(x, *weights, bias, padding=1), rtol=1e-4, atol=1e-4)
    assert mtd_kernels.cpu_path_cache() == {}  # forced: nothing measured
    monkeypatch.setenv("MTD_CPU_KERNELS", "fastest")
    with pytest.raises(ValueError, match="MTD_CPU_KERNELS=fastest"):
        mtd_kernels.cp_conv2d(x, *weights, bias, padding=1)
