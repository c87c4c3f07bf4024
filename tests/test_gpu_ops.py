"""The ops on a CUDA device: torch.ops.mtd.* through the dispatch path, for each CUDA backend.

Every test is skipped without a CUDA device.  Backends: ``triton`` (when Triton imports) and
``cuda`` (when the extension was built with its CUDA kernels); the ``backend`` fixture selects one
through :func:`mtd_kernels.set_cuda_backend`, so the op's registered CUDA entry is what runs.
References are the unfused chain in float64 on the CPU, on the same (rounded) inputs.
Autotuning is switched off (``MTD_TRITON_AUTOTUNE=0``) except in the one slow test that checks it.
"""
from __future__ import annotations


import pytest
import torch

import mtd_kernels
from mtd_kernels import dispatch, reference

from _op_cases import (BRIDGE_CASES, DTYPES, OPS, RUN_CASES, Case, assert_close, bridge_reference_output,
                       make_bridge_args, make_inputs, make_run_args, map_tensors, reference_output,
                       run_reference_output)

DEVICE = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# max |err| <= TOL * max|ref| + TOL * |ref|
TOLERANCE = {"float32": 1e-5, "tf32": 2e-3, "float16": 1e-2, "bfloat16": 3e-2}


CASES = [
    Case(1, 3, (5, 5), 1, 17, (3, 3), padding=(1, 1), relu=True),
    Case(3, 17, (7, 6), 5, 3, (3, 3), stride=(2, 2), dilation=(2, 2), layout="channels_last", bias=False),
    Case(1, 17, (6, 5), 17, 5, (5, 5), padding=(2, 2), relu=True),
    Case(1, 3, (4, 5), 5, 17, (1, 1), stride=(2, 2), layout="channels_last"),
    Case(3, 5, (3, 7), 5, 5, (1, 3), stride=(1, 2), padding=(0, 2), dilation=(1, 2), layout="strided", relu=True),
    Case(2, 64, (16, 16), 32, 96, (3, 3), padding=(1, 1), relu=True),  # a typical compressed ResNet layer
    Case(2, 130, (9, 11), 70, 200, (3, 3), stride=(2, 2), padding=(1, 1), layout="channels_last"),  # many blocks
]
LOW_PRECISION_CASES = [CASES[0], CASES[1], CASES[5]]


def _run_op(op: str, x, weights, bias, c: Case) -> torch.Tensor:
    return getattr(mtd_kernels, op)(x, *weights, bias, c.stride, c.padding, c.dilation, c.relu)


def _backend_available(name: str) -> bool:
    if name == "triton":
        try:
            import mtd_kernels.triton as mtd_triton
        except Exception:
            return False
        return bool(mtd_triton.AVAILABLE)
    return mtd_kernels.cuda_extension_available()


def _set_tf32(enabled: bool):
    """Switch TF32 for matmuls and cuDNN convs; returns the function that restores the old setting.

    Uses the legacy flags (which keep the ``fp32_precision`` API in step) unless this session already
    uses the new API, where torch refuses legacy reads.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
    except RuntimeError:
        saved_new = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"

        def restore_new() -> None:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved_new

        return restore_new
    matmul.allow_tf32 = cudnn.allow_tf32 = enabled

    def restore() -> None:
        matmul.allow_tf32, cudnn.allow_tf32 = saved

    return restore


@pytest.fixture(autouse=True)
def _exact_fp32_and_fixed_config(monkeypatch):
    """fp32 means fp32 (no TF32 anywhere) and one config per shape, restored afterwards."""
    monkeypatch.setenv("MTD_TRITON_AUTOTUNE", "0")
    restore = _set_tf32(False)
    yield
    restore()


@pytest.fixture(params=["triton", "cuda"])
def backend(request):
    if not _backend_available(request.param):
        pytest.skip(f"CUDA backend {request.param!r} is not available here")
    mtd_kernels.set_cuda_backend(request.param)
    yield request.param
    mtd_kernels.set_cuda_backend(None)


def _layout_ok(x: torch.Tensor, out: torch.Tensor) -> bool:
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_matches_float64_reference(backend, op, case):
    assert dispatch.cuda_kernel(op) is not None, f"backend {backend} resolved to the unfused chain"
    x, weights, bias = make_inputs(op, case, torch.float32, device=DEVICE)
    out = _run_op(op, x, weights, bias, case)
    assert out.device == x.device and out.dtype == x.dtype and _layout_ok(x, out)
    assert_close(out, reference_output(op, x, weights, bias, case), TOLERANCE["float32"])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_low_precision_matches_float64_reference(backend, op, dtype, case):
    x, weights, bias = make_inputs(op, case, DTYPES[dtype], seed=1, device=DEVICE)
    out = _run_op(op, x, weights, bias, case)
    assert out.dtype == DTYPES[dtype] and _layout_ok(x, out)
    assert_close(out, reference_output(op, x, weights, bias, case), TOLERANCE[dtype])


@pytest.mark.parametrize("op", OPS)
def test_tf32_when_allowed(op):
    if not _backend_available("triton"):
        pytest.skip("triton is not available")
    case = CASES[5]
    x, weights, bias = make_inputs(op, case, torch.float32, seed=2, device=DEVICE)
    restore = _set_tf32(True)
    mtd_kernels.set_cuda_backend("triton")
    try:
        out = _run_op(op, x, weights, bias, case)
    finally:
        mtd_kernels.set_cuda_backend(None)
        restore()
    assert_close(out, reference_output(op, x, weights, bias, case), TOLERANCE["tf32"])


@pytest.mark.parametrize("op", OPS)
def test_triton_masks_write_every_output_and_nothing_else(op):
    """On the GPU: write into a strided view of a NaN buffer; all of the view is set, none of the rest."""
    if not _backend_available("triton"):
        pytest.skip("triton is not available")
    import mtd_kernels.triton as mtd_triton

    case = Case(3, 17, (9, 10), 5, 17, (3, 3), stride=(2, 1), padding=(2, 1), relu=True)
    x, weights, bias = make_inputs(op, case, torch.float32, seed=3, device=DEVICE)
    ref = reference_output(op, x, weights, bias, case)
    n, t, ho, wo = ref.shape
    buffer = torch.full((n + 1, t + 3, ho + 2, wo + 5), float("nan"), device=DEVICE)
    view = (slice(1, None), slice(2, t + 2), slice(1, ho + 1), slice(3, wo + 3))
    getattr(mtd_triton, op)(x, *weights, bias, case.stride, case.padding, case.dilation, case.relu,
                            allow_tf32=False, out=buffer[view])
    assert_close(buffer[view], ref, TOLERANCE["float32"])
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[view] = False
    assert torch.isnan(buffer[outside]).all(), "the kernel wrote outside its output"


@pytest.mark.parametrize("op", OPS)
def test_backward_matches_reference(backend, op):
    case = CASES[0]
    x, weights, bias = make_inputs(op, case, torch.float32, seed=4, device=DEVICE)
    leaves = [t.detach().requires_grad_() for t in (x, *weights, bias)]
    out = getattr(mtd_kernels, op)(*leaves, case.stride, case.padding, case.dilation, case.relu)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    grads = torch.autograd.grad(out, leaves, grad_out)

    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (x, *weights, bias)]
    ref = getattr(reference, f"{op}_ref")(*ref_leaves, case.stride, case.padding, case.dilation, case.relu)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.cpu().double())
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, 1e-4)


@pytest.mark.parametrize("op", OPS)
def test_opcheck_on_cuda(backend, op):
    case = CASES[0]
    x, weights, bias = make_inputs(op, case, torch.float32, seed=6, device=DEVICE)
    args = (x.requires_grad_(), *[w.requires_grad_() for w in weights], bias,
            list(case.stride), list(case.padding), list(case.dilation), case.relu)
    torch.library.opcheck(getattr(torch.ops.mtd, op).default, args)


@pytest.mark.parametrize("op", OPS)
def test_torch_compile_fullgraph(backend, op):
    case = CASES[1]
    x, weights, bias = make_inputs(op, case, torch.float32, seed=7, device=DEVICE)

    def layer(inp: torch.Tensor) -> torch.Tensor:
        return torch.relu(getattr(mtd_kernels, op)(inp, *weights, bias, case.stride, case.padding,
                                                   case.dilation, case.relu)) * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    assert_close(compiled(x), layer(x).cpu().double(), 1e-6)


@pytest.mark.parametrize("op", OPS)
def test_bad_input_is_the_same_value_error_as_on_cpu(backend, op):
    """H=2 < k=3 at stride 2 has no output row: every backend raises what the CPU kernel raises."""
    case = CASES[0]
    x, weights, bias = make_inputs(op, case, torch.float32, seed=9, device=DEVICE)
    small = x[:, :, :2, :2]
    for tensors in ((small.cpu(), [w.cpu() for w in weights], bias.cpu()), (small, weights, bias)):
        with pytest.raises(ValueError, match="too small"):
            getattr(mtd_kernels, op)(tensors[0], *tensors[1], tensors[2], 2, 0, 1, False)


@pytest.mark.parametrize("op", OPS)
def test_float64_runs_the_chain(backend, op):
    case = CASES[0]
    x, weights, bias = make_inputs(op, case, torch.float64, seed=10, device=DEVICE)
    assert dispatch.cuda_kernel(op, torch.float64) is None
    out = _run_op(op, x, weights, bias, case)
    assert out.dtype == torch.float64 and _layout_ok(x, out)
    assert_close(out, reference_output(op, x, weights, bias, case), 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_triton_autotuned_configs_are_correct(op, monkeypatch):
    """With autotuning on, every config compiles (or is skipped by Triton) and the winner is right."""
    if not _backend_available("triton"):
        pytest.skip("triton is not available")
    import mtd_kernels.triton as mtd_triton

    monkeypatch.setenv("MTD_TRITON_AUTOTUNE", "1")
    case = CASES[6]
    x, weights, bias = make_inputs(op, case, torch.float16, seed=8, device=DEVICE)
    out = getattr(mtd_triton, op)(x, *weights, bias, case.stride, case.padding, case.dilation, case.relu)
    assert_close(out, reference_output(op, x, weights, bias, case), TOLERANCE["float16"])


# ---- the rank-space bridge (Triton twin; without Triton the CUDA entry runs the reference)
@pytest.fixture
def triton_backend():
    if not _backend_available("triton"):
        pytest.skip("triton is not available")
    mtd_kernels.set_cuda_backend("triton")
    yield
    mtd_kernels.set_cuda_backend(None)


def _bridge_on_cuda(case, dtype, layout="channels_last", seed=0):
    args = make_bridge_args(case, dtype, layout, seed)
    return map_tensors(lambda t: t.to(DEVICE), args)


# every case channels_last (what prepared models pass); NCHW and a strided view on two (each case compiles)
BRIDGE_GPU_CASES = [(c, "channels_last") for c in BRIDGE_CASES] + [(c, l) for c in BRIDGE_CASES[:2]
                                                                    for l in ("nchw", "view")]


@pytest.mark.parametrize("case,layout", BRIDGE_GPU_CASES, ids=lambda v: str(v))
def test_rank_bridge_float32_matches_reference(triton_backend, case, layout):
    assert dispatch.cuda_kernel("rank_bridge") is not None, "the bridge resolved to the reference on CUDA"
    args = _bridge_on_cuda(case, torch.float32, layout)
    out = torch.ops.mtd.rank_bridge(*args)
    assert out.device == args[0].device and _layout_ok(args[0], out)
    assert_close(out, bridge_reference_output(args), TOLERANCE["float32"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rank_bridge_low_precision(triton_backend, dtype):
    for case in BRIDGE_CASES[:3]:
        args = _bridge_on_cuda(case, DTYPES[dtype], seed=1)
        out = torch.ops.mtd.rank_bridge(*args)
        assert out.dtype == DTYPES[dtype]
        assert_close(out, bridge_reference_output(args), TOLERANCE[dtype])


def test_rank_bridge_opcheck_and_gradients_on_cuda(triton_backend):
    args = _bridge_on_cuda(BRIDGE_CASES[1], torch.float32, seed=2)
    args = map_tensors(lambda t: t.requires_grad_(), args)
    torch.library.opcheck(torch.ops.mtd.rank_bridge.default, args)
    out = torch.ops.mtd.rank_bridge(*args)
    grad_out = torch.randn_like(out)
    leaves = [args[0], *args[1], args[2], args[3], args[4]]
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_args = map_tensors(lambda t: t.detach().cpu().double().requires_grad_(), args)
    ref = reference.rank_bridge_ref(*ref_args)
    ref_leaves = [ref_args[0], *ref_args[1], ref_args[2], ref_args[3], ref_args[4]]
    for g, rg in zip(grads, torch.autograd.grad(ref, ref_leaves, grad_out.cpu().double())):
        assert_close(g, rg, 1e-4)


def test_rank_space_model_on_cuda(triton_backend):
    """A prepared VGG regrouped into rank space runs its bridges on the GPU and matches the original."""
    import copy

    import mtd
    from mtd.layers import CPConv2d

    torch.manual_seed(0)
    model = mtd.models.build_model("vgg11", width=0.25).eval()
    for i, m in enumerate(model.features):
        if isinstance(m, torch.nn.Conv2d) and i > 0:
            model.features[i] = CPConv2d(m.in_channels, m.out_channels, m.kernel_size, 8, padding=m.padding,
                                         bias=m.bias is not None, backend="fused")
    model = model.to(DEVICE)
    x = torch.randn(2, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = model(x)
        prepared = mtd.prepare_inference(copy.deepcopy(model))
        got = prepared(x)
    assert any("RankSpaceRun" in type(m).__name__ for m in prepared.modules()), "nothing was regrouped"
    assert_close(got, want.cpu().double(), 1e-4)


@pytest.mark.parametrize("name", list(RUN_CASES))
def test_rank_run_on_cuda_is_its_bridges(triton_backend, name):
    """On CUDA rank_run is one rank_bridge call per bridge (packed stays empty: the packing is the CPU kernel's)."""
    args = map_tensors(lambda t: t.cuda(), make_run_args(name, torch.float32))
    out = torch.ops.mtd.rank_run(*args)
    assert out.device == args[0].device
    assert_close(out, run_reference_output(args), TOLERANCE["float32"])
    torch.library.opcheck(torch.ops.mtd.rank_run.default, args)
