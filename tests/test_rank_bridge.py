"""torch.ops.mtd.rank_bridge (rank space across layers) and the regrouping of prepare_inference.

The op is checked against its plain-PyTorch description (mtd_kernels/ops/rank_bridge.py) in float64 on
both CPU paths (the fused kernel and the oneDNN chain), over shapes that reach every tiling branch; the
regrouped models against the eval-mode originals.
"""
from __future__ import annotations

import copy
import pytest
import torch
from torch import nn

import mtd
import mtd_kernels
from mtd.layers import CP4Conv2d, CPConv2d, TuckerConv2d, get_module, replace_module
from mtd.layers.rank_space import RankBridge, RankSpaceRun, to_rank_space
from _op_cases import BRIDGE_CASES as CASES
from _op_cases import BridgeCase as Case
from _op_cases import bridge_reference_output, make_bridge_args as make_args, map_tensors

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}  # max |out - ref| / max(1, max |ref|)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.abs().max().clamp_min(1.0)).item()


def test_extension_has_the_op():
    assert mtd_kernels.extension_available(), mtd_kernels.extension_error()
    assert hasattr(torch.ops.mtd, "rank_bridge")


@pytest.mark.parametrize("path", ["fused", "chain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference(case: Case, dtype, path, monkeypatch):
    monkeypatch.setenv("MTD_CPU_KERNELS", path)
    args = make_args(case, dtype)
    out = torch.ops.mtd.rank_bridge(*args)
    ref = bridge_reference_output(args)
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]
    assert out.is_contiguous(memory_format=torch.channels_last)  # the input's layout


@pytest.mark.parametrize("layout", ["nchw", "view"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[8]], ids=str)
def test_other_layouts(case: Case, layout, monkeypatch):
    monkeypatch.setenv("MTD_CPU_KERNELS", "fused")
    args = make_args(case, torch.float32, layout)
    out = torch.ops.mtd.rank_bridge(*args)
    assert rel_err(out, bridge_reference_output(args)) <= TOL[torch.float32]
    assert out.is_contiguous()  # NCHW in, NCHW out (a view that is neither is made NCHW)


def test_measured_choice_is_cached(monkeypatch):
    monkeypatch.delenv("MTD_CPU_KERNELS", raising=False)
    monkeypatch.delenv("MTD_CPU_PATH", raising=False)
    mtd_kernels.clear_cpu_path_cache()
    args = make_args(CASES[0], torch.float32)
    first = torch.ops.mtd.rank_bridge(*args)
    entries = [(k, v) for k, v in mtd_kernels.cpu_path_cache().items() if k.startswith("rank_bridge")]
    assert len(entries) == 1 and entries[0][1] in ("fused", "chain") and "+pool" in entries[0][0]
    torch.testing.assert_close(torch.ops.mtd.rank_bridge(*args), first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[5]], ids=str)
def test_opcheck(case: Case):
    args = make_args(case, torch.float32)
    args = map_tensors(lambda t: t.requires_grad_(), args)
    torch.library.opcheck(torch.ops.mtd.rank_bridge.default, args)


def test_gradcheck_fp64():
    x, spatial, w_last, bias, w_next, *geometry = make_args(Case("tucker", 1, 3, (4, 5), 4, 2), torch.float64)
    tensors = [t.requires_grad_() for t in (x, *spatial, w_last, bias, w_next)]

    def fn(x, core, w_last, bias, w_next):
        return torch.ops.mtd.rank_bridge(x, [core], w_last, bias, w_next, *geometry)

    # a max-pool has no gradient at ties; random inputs have none
    assert torch.autograd.gradcheck(fn, tensors)


ERRORS = [
    (lambda a: {**a, "spatial": []}, "spatial must hold one factor"),
    (lambda a: {**a, "spatial": [torch.randn(5, 1, 3, 3)]}, "must be depthwise"),
    (lambda a: {**a, "w_last": torch.randn(12, 7, 1, 1)}, r"w_last must be \(T, 8, 1, 1\)"),
    (lambda a: {**a, "bias": torch.randn(11)}, r"bias must have shape \(12,\)"),
    (lambda a: {**a, "w_next": torch.randn(5, 11, 1, 1)}, r"w_next must be \(R, 12, 1, 1\)"),
    (lambda a: {**a, "w_next": torch.randn(5, 12, 1, 1, dtype=torch.float64)}, "w_next must match the input's dtype"),
    (lambda a: {**a, "input": torch.randn(2, 8, 1, 1), "padding": [0, 0]}, "too small for this kernel"),
    (lambda a: {**a, "input": torch.randn(2, 8, 1, 5)}, "too small for the 2x2 max-pool"),
    (lambda a: {**a, "input": torch.randn(8, 9, 7)}, "input must be 4-D"),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("mutate,message", ERRORS, ids=[m for _, m in ERRORS])
def test_clear_errors_alike_in_the_kernel_and_the_fake(mutate, message, device):
    names = ("input", "spatial", "w_last", "bias", "w_next", "stride", "padding", "dilation", "relu", "pool")
    args = dict(zip(names, make_args(CASES[0], torch.float32, "nchw")))
    args = mutate(args)
    values = map_tensors(lambda t: t.to(device), tuple(args.values()))
    with pytest.raises(ValueError, match=message):
        torch.ops.mtd.rank_bridge(*values)


# ---- regrouping -------------------------------------------------------------------------------
def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.fixture(scope="module")
def compressed_vgg() -> nn.Module:
    return build_compressed_vgg()


def build_compressed_vgg() -> nn.Module:
    """VGG11 width 1/4: conv 0 and 2 dense, the others CP3 / Tucker-2 / CP4 (every kind, dense in the middle)."""
    torch.manual_seed(0)
    model = mtd.models.build_model("vgg11", width=0.25)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    makers = [None, lambda c: CPConv2d.from_conv(c, rank=8), None, lambda c: TuckerConv2d.from_conv(c, ranks=(8, 6)),
              lambda c: CP4Conv2d.from_conv(c, rank=8), lambda c: CPConv2d.from_conv(c, rank=12),
              lambda c: TuckerConv2d.from_conv(c, ranks=(10, 12)), lambda c: CPConv2d.from_conv(c, rank=16)]
    for name, make in zip(convs, makers):
        if make is not None:
            replace_module(model, name, make(get_module(model, name)))
    _randomise_bn(model)
    return model.eval()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_prepared_vgg_runs_in_rank_space(compressed_vgg, layout):
    x = torch.randn(3, 3, 32, 32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    prepared = mtd.prepare_inference(compressed_vgg)
    runs = [m for m in prepared.modules() if isinstance(m, RankSpaceRun)]
    assert len(runs) == 1 and len(runs[0].bridges) == 8  # the whole feature stack, dense convs included
    assert runs[0].entry is None  # it starts at the dense first conv: the image is its input
    assert sum(b.pool for b in runs[0].bridges) == 5  # every max-pool went into a bridge
    assert all(isinstance(m, (RankSpaceRun, nn.Identity)) for m in prepared.features)
    with torch.no_grad():
        expected = compressed_vgg(x)
        assert rel_err(prepared(x), expected) < 1e-5
        per_layer = mtd.prepare_inference(compressed_vgg, rank_space=False)
        assert rel_err(per_layer(x), expected) < 1e-5


def test_the_run_measures_its_paths(compressed_vgg, monkeypatch):
    x = torch.randn(2, 3, 32, 32)
    prepared = mtd.prepare_inference(compressed_vgg)
    run = next(m for m in prepared.modules() if isinstance(m, RankSpaceRun))
    calls = {"run": 0, "bridge": 0, "layers": 0}
    monkeypatch.setattr(run, "_run", _counting(run._run, calls, "run"))
    monkeypatch.setattr(run, "_bridged", _counting(run._bridged, calls, "bridge"))
    run.layers.register_forward_pre_hook(lambda module, args: calls.__setitem__("layers", calls["layers"] + 1))
    with torch.no_grad():
        expected = compressed_vgg(x)
        monkeypatch.setenv("MTD_RANK_SPACE", "run")
        assert rel_err(prepared(x), expected) < 1e-5 and calls == {"run": 1, "bridge": 0, "layers": 0}
        monkeypatch.setenv("MTD_RANK_SPACE", "bridge")
        assert rel_err(prepared(x), expected) < 1e-5 and calls == {"run": 1, "bridge": 1, "layers": 0}
        monkeypatch.setenv("MTD_RANK_SPACE", "layers")
        assert rel_err(prepared(x), expected) < 1e-5 and calls == {"run": 1, "bridge": 1, "layers": 1}
        monkeypatch.setenv("MTD_RANK_SPACE", "auto")
        assert rel_err(prepared(x), expected) < 1e-5  # measures: a warm-up and five timed calls of each
        assert calls == {"run": 7, "bridge": 7, "layers": 7}
        (choice,) = run.path_cache().values()
        prepared(x)  # cached: one call of the chosen path
        assert calls[choice] == 8 and sum(calls.values()) == 22
        monkeypatch.setenv("MTD_RANK_SPACE", "fastest")
        with pytest.raises(ValueError, match="MTD_RANK_SPACE"):
            prepared(x)


def _counting(fn, calls: dict, name: str):
    def counted(x):
        calls[name] += 1
        return fn(x)
    return counted


def test_what_is_left_alone():
    conv = lambda s, t: nn.Conv2d(s, t, 3, padding=1)  # noqa: E731
    torch.manual_seed(0)
    torch_backend = CPConv2d.from_conv(conv(8, 8), rank=4, backend="torch")
    same = CPConv2d.from_conv(nn.Conv2d(8, 8, 4, padding="same"), rank=4)  # asymmetric padding
    shared = CPConv2d.from_conv(conv(8, 8), rank=4)
    model = nn.Sequential(conv(3, 8), nn.ReLU(), CPConv2d.from_conv(conv(8, 8), rank=4), nn.BatchNorm2d(8),  # BN ends
                          CPConv2d.from_conv(conv(8, 8), rank=4), torch_backend, nn.ReLU(),
                          CPConv2d.from_conv(conv(8, 8), rank=4), same, shared, nn.ReLU(), shared,
                          nn.MaxPool2d(3, 2))
    _randomise_bn(model)
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    expected = model(x)
    grouped = to_rank_space(copy.deepcopy(model))
    with torch.no_grad():
        assert rel_err(grouped(x), expected) < 1e-5
    assert isinstance(grouped[0], RankSpaceRun) and len(grouped[0].bridges) == 2  # conv 0 + the CP before the BN
    assert isinstance(grouped[3], nn.BatchNorm2d)
    assert isinstance(grouped[4], CPConv2d)  # alone between BN and a torch-backend layer: nothing to gain
    assert grouped[5] is not None and type(grouped[5]) is CPConv2d and grouped[5].backend == "torch"
    assert type(grouped[8]) is CPConv2d and type(grouped[9]) is CPConv2d and type(grouped[11]) is CPConv2d
    assert isinstance(grouped[12], nn.MaxPool2d)  # 3x3 pool: not the 2x2 the bridge fuses


def test_bridge_module_exports(compressed_vgg, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    prepared = mtd.prepare_inference(compressed_vgg)
    program = torch.export.export(prepared, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "mtd.rank_bridge.default" in targets
    torch.export.save(program, tmp_path / "model.pt2")
    torch.testing.assert_close(torch.export.load(tmp_path / "model.pt2").module()(x), prepared(x))

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = mtd.export_onnx(prepared, tmp_path / "model.onnx", x)
    graph = onnx.load(str(path)).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, "a non-standard op was exported"
    ops = [n.op_type for n in graph.node]
    assert ops.count("MaxPool") == 5
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), prepared(x), rtol=1e-4, atol=1e-4)


def test_bridge_module_repr_and_state_dict(compressed_vgg):
    prepared = mtd.prepare_inference(compressed_vgg)
    bridge = next(m for m in prepared.modules() if isinstance(m, RankBridge))
    assert "pool=True" in repr(bridge)
    assert not any(p.requires_grad for p in bridge.parameters())  # an inference copy
    clone = mtd.prepare_inference(compressed_vgg)
    clone.load_state_dict(prepared.state_dict())

