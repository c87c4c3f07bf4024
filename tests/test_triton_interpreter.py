"""The fused Triton kernels, run on CPU tensors by Triton's interpreter (TRITON_INTERPRET=1).

Triton must see TRITON_INTERPRET=1 before it is first imported (its own ``tl.zeros`` & co. are
decorated then), which a pytest session that already imported it cannot undo.  So a normal run
executes one test, ``test_kernels_in_interpreter_subprocess``, which reruns this file in a fresh
``TRITON_INTERPRET=1`` process where the real tests run (and are skipped in the parent).  Run them
directly with ``TRITON_INTERPRET=1 pytest tests/test_triton_interpreter.py``.

The interpreter costs tens of ms per program, hence tiny shapes.  It does not check GPU-only rules
(dot sizes, power-of-two blocks, out-of-bounds accesses), so the masks are checked here by writing
into a NaN-poisoned buffer.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from mtd_kernels import dispatch  # noqa: E402
from _op_cases import (BRIDGE_CASES, DTYPES, OPS, Case, assert_close, bridge_reference_output,  # noqa: E402
                       make_bridge_args, make_inputs, reference_output)


def _interpreter_active() -> bool:
    """True when this process imported Triton in interpreter mode (env set before the import)."""
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on", "yes"):
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


IN_INTERPRETER = _interpreter_active()
interpreted = pytest.mark.skipif(
    not IN_INTERPRETER, reason="runs in the TRITON_INTERPRET=1 subprocess of test_kernels_in_interpreter_subprocess"
)

# max |err| <= TOL * max|ref| + TOL * |ref|, against a float64 reference on the same (rounded) inputs
TOLERANCE = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}


@pytest.mark.skipif(IN_INTERPRETER, reason="already inside the interpreter process")
def test_kernels_in_interpreter_subprocess(tmp_path):
    # The child must test the package this process imported (a dev tree or the installed one), so
    # it gets that package's parent on its path and runs outside the source tree.
    import mtd_kernels

    package_root = str(Path(mtd_kernels.__file__).resolve().parents[1])
    path = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path,
           "MTD_EXPECTED_KERNELS": str(Path(mtd_kernels.__file__).resolve())}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"interpreter tests failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, proc.stdout[-2000:]


@interpreted
def test_subprocess_imports_the_parents_package():
    import mtd_kernels

    expected = os.environ.get("MTD_EXPECTED_KERNELS")
    if expected is None:
        pytest.skip("run directly, not from test_kernels_in_interpreter_subprocess")
    assert str(Path(mtd_kernels.__file__).resolve()) == expected


def _purge_triton_modules() -> None:
    for name in [m for m in sys.modules if m == "mtd_kernels.triton" or m.startswith("mtd_kernels.triton.")]:
        del sys.modules[name]
    import mtd_kernels

    if "triton" in vars(mtd_kernels):
        delattr(mtd_kernels, "triton")


@pytest.fixture(scope="module")
def tk():
    """``mtd_kernels.triton``, its kernels decorated in interpreter mode."""
    return importlib.import_module("mtd_kernels.triton")


# Awkward on purpose: odd channels (3, 17 > one 16-block), ranks 1/5/17, stride 2, padding 0/2,
# dilation 2, kernels 1x1/3x3/5x5/1x3, batch 1 and 3, pixel counts that are not multiples of 16.
CASES = [
    Case(1, 3, (5, 5), 1, 17, (3, 3), padding=(1, 1), relu=True),
    Case(3, 17, (7, 6), 5, 3, (3, 3), stride=(2, 2), dilation=(2, 2), layout="channels_last", bias=False),
    Case(1, 17, (4, 3), 17, 5, (5, 5), padding=(2, 2), relu=True),
    Case(1, 3, (4, 5), 5, 17, (1, 1), stride=(2, 2), layout="channels_last"),
    Case(3, 5, (3, 7), 5, 5, (1, 3), stride=(1, 2), padding=(0, 2), dilation=(1, 2), layout="strided",
         relu=True),
]
LOW_PRECISION_CASES = CASES[:2]


def _expected_layout_ok(x: torch.Tensor, out: torch.Tensor) -> bool:
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@interpreted
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.kernel[0]}x{c.kernel[1]}-{c.layout}")
def test_float32_matches_reference(tk, op, case):
    x, weights, bias = make_inputs(op, case, torch.float32)
    out = getattr(tk, op)(x, *weights, bias, case.stride, case.padding, case.dilation, case.relu,
                          allow_tf32=False)
    assert_close(out, reference_output(op, x, weights, bias, case), TOLERANCE["float32"])
    assert _expected_layout_ok(x, out)


@interpreted
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=lambda c: f"{c.kernel[0]}x{c.kernel[1]}-{c.layout}")
def test_low_precision_matches_float64_reference(tk, op, dtype, case):
    x, weights, bias = make_inputs(op, case, DTYPES[dtype], seed=1)
    out = getattr(tk, op)(x, *weights, bias, case.stride, case.padding, case.dilation, case.relu)
    assert out.dtype == DTYPES[dtype]
    assert_close(out, reference_output(op, x, weights, bias, case), TOLERANCE[dtype])


@interpreted
def test_dot_precision_follows_dtype_and_torch_setting(tk, monkeypatch):
    """What the launchers ask ``tl.dot`` for (the interpreter cannot show TF32 rounding itself)."""
    from mtd_kernels.triton import _common

    x32, x16, xbf = (torch.zeros(1, dtype=d) for d in (torch.float32, torch.float16, torch.bfloat16))
    assert _common.dot_precision(x32, False) == "ieee"
    assert _common.dot_precision(x32, True) == "tf32"
    monkeypatch.setattr(_common, "torch_allows_tf32", lambda: True)
    assert _common.dot_precision(x32, None) == "tf32"
    monkeypatch.setattr(_common, "torch_allows_tf32", lambda: False)
    assert _common.dot_precision(x32, None) == "ieee"
    assert _common.dot_precision(x16, False) == "tf32"  # 16-bit operands ignore the setting
    assert _common.dot_precision(xbf, None) == _common.UPCAST_TO_FP32  # interpreter-only bf16 fix


@interpreted
@pytest.mark.parametrize("op", OPS)
def test_masks_write_every_output_and_nothing_else(tk, op):
    """Write into a strided view of a NaN buffer: all of the view must be set, none of the rest."""
    case = Case(3, 17, (5, 6), 5, 17, (3, 3), stride=(2, 1), padding=(2, 1), relu=True)
    x, weights, bias = make_inputs(op, case, torch.float32, seed=3)
    ref = reference_output(op, x, weights, bias, case)
    n, t, ho, wo = ref.shape
    buffer = torch.full((n + 1, t + 3, ho + 2, wo + 5), float("nan"))
    out = buffer[1:, 2 : t + 2, 1 : ho + 1, 3 : wo + 3]
    result = getattr(tk, op)(x, *weights, bias, case.stride, case.padding, case.dilation, case.relu,
                             allow_tf32=False, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_close(out, ref, TOLERANCE["float32"])
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[1:, 2 : t + 2, 1 : ho + 1, 3 : wo + 3] = False
    assert torch.isnan(buffer[outside]).all(), "the kernel wrote outside its output"


@interpreted
def test_bad_inputs_raise_clear_errors(tk, monkeypatch):
    x, weights, bias = make_inputs("cp_conv2d", CASES[0], torch.float32)
    with pytest.raises(ValueError, match="float64"):
        tk.cp_conv2d(x.double(), *[w.double() for w in weights], None, 1, 1, 1, False)
    with pytest.raises(ValueError, match="out must have shape"):
        tk.cp_conv2d(x, *weights, bias, 1, 1, 1, False, out=torch.empty(1))
    with pytest.raises(ValueError, match="factor shapes do not chain"):
        tk.cp_conv2d(x, weights[0], weights[1][:0], weights[2], bias, 1, 1, 1, False)
    with pytest.raises(ValueError, match="too small"):  # H=2 < k=3 at stride 2, no padding
        tk.cp_conv2d(x[:, :, :2, :2], *weights, bias, 2, 0, 1, False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        tk.cp_conv2d(x, *weights, bias, 1, 1, 1, False)


@interpreted
def test_import_never_queries_the_gpu(tk, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("mtd_kernels.triton queried CUDA at import time")

    monkeypatch.setattr(torch.cuda, "is_available", forbidden)
    monkeypatch.setattr(torch.cuda, "device_count", forbidden)
    _purge_triton_modules()
    fresh = importlib.import_module("mtd_kernels.triton")
    assert fresh.AVAILABLE  # lazy: the interpreter counts as available, without asking CUDA


@interpreted
def test_dispatch_runs_triton_and_the_chain_for_float64(tk, monkeypatch):
    monkeypatch.setitem(dispatch._FINDERS, "cuda", lambda op: None)  # no CUDA extension on this path
    dispatch.resolve.cache_clear()
    case = CASES[0]
    x, weights, bias = make_inputs("cp_conv2d", case, torch.float32, seed=4)
    args = (bias, list(case.stride), list(case.padding), list(case.dilation), case.relu)
    try:
        for backend in ("triton", "auto"):
            dispatch.set_cuda_backend(backend)
            kernel = dispatch.cuda_kernel("cp_conv2d", torch.float32)
            assert kernel.__module__ == "mtd_kernels.triton.cp_conv2d"  # (the module may have been reimported)
            assert_close(kernel(x, *weights, *args), reference_output("cp_conv2d", x, weights, bias, case), 1e-4)
            assert dispatch.cuda_kernel("cp_conv2d", torch.float64) is None  # Triton has no fp64: the chain
    finally:
        dispatch.set_cuda_backend(None)
        dispatch.resolve.cache_clear()


@pytest.mark.slow
@pytest.mark.skipif(IN_INTERPRETER, reason="compiles the real (non-interpreted) kernels")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype,precision", [("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "ieee"), ("fp32", "tf32")])
def test_kernels_compile_for_sm90_without_a_gpu(op, dtype, precision, tmp_path, monkeypatch):
    """Ahead-of-time compile to a Hopper cubin: checks the GPU rules the interpreter does not (dot
    shapes and dtypes, constexpr use, layouts) with Triton's bundled ptxas, no device needed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    module = importlib.import_module(f"mtd_kernels.triton.{op}")
    autotuner = getattr(module, f"_{op}_kernel")
    config = autotuner.configs[0]
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # really compile, and leave no cache behind
    constants = {"KH": 3, "KW": 3, "HAS_BIAS": True, "RELU": True, "DOT_PRECISION": precision,
                 "stride_xc": 1, "stride_oc": 1, **config.kwargs}  # channels_last specialisation
    signature = {name: "constexpr" if name in constants else f"*{dtype}" if name.endswith("_ptr") else "i32"
                 for name in autotuner.fn.arg_names}
    compiled = triton_compile(ASTSource(autotuner.fn, signature, constexprs=constants),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    assert compiled.asm.get("cubin"), f"{op} ({dtype}, {precision}) produced no cubin"


@interpreted
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("case", BRIDGE_CASES[:6], ids=str)
def test_rank_bridge_matches_reference(tk, case, layout):
    args = make_bridge_args(case, torch.float32, layout)
    out = tk.rank_bridge(*args, allow_tf32=False)
    assert_close(out, bridge_reference_output(args), TOLERANCE["float32"])
    assert _expected_layout_ok(args[0], out)


@interpreted
def test_rank_bridge_low_precision_and_masks(tk):
    args = make_bridge_args(BRIDGE_CASES[0], torch.float16, seed=2)
    out = tk.rank_bridge(*args)
    assert out.dtype == torch.float16
    assert_close(out, bridge_reference_output(args), TOLERANCE["float16"])
    args = make_bridge_args(BRIDGE_CASES[1], torch.float32, seed=3)
    ref = bridge_reference_output(args)
    n, c, h, w = ref.shape
    buffer = torch.full((n, c + 2, h + 1, w + 3), float("nan"))
    view = buffer[:, 1 : c + 1, 1:, 2 : w + 2]
    tk.rank_bridge(*args, allow_tf32=False, out=view)
    assert_close(view, ref, TOLERANCE["float32"])
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[:, 1 : c + 1, 1:, 2 : w + 2] = False
    assert torch.isnan(buffer[outside]).all(), "the kernel wrote outside its output"
    with pytest.raises(ValueError, match="too small for the 2x2 max-pool"):
        tk.rank_bridge(args[0][:, :, :1], *args[1:])
