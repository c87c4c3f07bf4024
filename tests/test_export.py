"""Save / reload / deploy a compressed model: mtd.save + mtd.load, ONNX of standard Conv chains (checked
with onnxruntime), torch.export round trip, the model-wide backend switch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mtd
from mtd.planner import LayerPlan, Plan, apply_plan


class SmallNet(nn.Module):
    """Conv+BN+ReLU layers of several geometries (strided, 5x5, even 'same' kernel) and a Linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 24, 5, stride=2, padding=2)
        self.b2 = nn.BatchNorm2d(24)
        self.c3 = nn.Conv2d(24, 24, (3, 1), padding=(1, 0), dilation=1)
        self.c4 = nn.Conv2d(24, 32, 4, padding="same")
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.c4(torch.relu(self.c3(x))))
        return self.fc(x.mean(dim=(2, 3)))


PLAN = Plan(model_name=None, model_kwargs={}, method="mtd", layers=[
    LayerPlan("c1", "conv", "tucker", [3, 8]), LayerPlan("c2", "conv", "cp", [12]),
    LayerPlan("c3", "conv", "dense"), LayerPlan("c4", "conv", "cp4", [10]), LayerPlan("fc", "linear", "svd", [4])])


def trained_looking(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them is visible in the outputs."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def compressed():
    torch.manual_seed(0)
    return trained_looking(apply_plan(SmallNet(), PLAN))


@pytest.fixture
def x():
    return torch.randn(2, 3, 18, 14, generator=torch.Generator().manual_seed(1))


def test_save_and_load_round_trip_without_decomposing(compressed, x, tmp_path, monkeypatch):
    path = mtd.save(compressed, tmp_path / "model.pt", plan=PLAN)
    import mtd.planner.factor_cache as factor_cache

    monkeypatch.setattr(factor_cache.FactorCache, "factors", lambda *a, **k: pytest.fail("decomposed again"))
    for architecture in (SmallNet(), SmallNet):  # a module or a zero-argument builder
        again = mtd.load(path, model=architecture).eval()
        torch.testing.assert_close(again(x), compressed(x))
    assert mtd.serialization.load_plan(path).layers[3].ranks == [10]


def test_load_errors_are_clear(compressed, tmp_path):
    path = mtd.save(compressed, tmp_path / "model.pt", plan=PLAN)
    with pytest.raises(ValueError, match="outside the mtd registry"):
        mtd.load(path)
    with pytest.raises(ValueError, match="has no layer"):
        mtd.load(path, model=nn.Sequential(nn.Conv2d(3, 16, 3)))

    class Wider(SmallNet):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 20)

    with pytest.raises(ValueError, match="does not match the model"):
        mtd.load(path, model=Wider)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a valid mtd checkpoint"):
        mtd.load(corrupt, model=SmallNet)
    mtd.models.save_checkpoint(tmp_path / "baseline.pt", SmallNet())
    with pytest.raises(ValueError, match="without a compression plan"):
        mtd.load(tmp_path / "baseline.pt", model=SmallNet)
    with pytest.raises(ValueError, match="mtd.load"):
        mtd.models.load_model(path)
    with pytest.raises(TypeError, match="Plan"):
        mtd.save(compressed, tmp_path / "x.pt", plan={"layers": []})


def test_registry_models_reload_from_the_file_alone(tmp_path):
    model = mtd.build_model("tiny_resnet", width=0.5).eval()
    plan = Plan(model_name="tiny_resnet", model_kwargs={"width": 0.5}, method="mtd",
                layers=[LayerPlan("block_conv1.0", "conv", "cp", [6])])
    small = apply_plan(model, plan)
    x = torch.randn(2, 3, 32, 32)
    again = mtd.load(mtd.save(small, tmp_path / "m.pt", plan=plan)).eval()
    torch.testing.assert_close(again(x), small(x))


def test_set_backend_switches_every_layer_and_keeps_outputs(compressed, x):
    from mtd.layers._factorized import FactorizedModule

    fused = compressed(x)
    mtd.set_backend(compressed, "torch")
    assert {m.backend for m in compressed.modules() if isinstance(m, FactorizedModule)} == {"torch"}
    torch.testing.assert_close(compressed(x), fused, rtol=1e-4, atol=1e-5)
    mtd.set_backend(compressed, "fused")
    assert {m.backend for m in compressed.modules() if isinstance(m, FactorizedModule)} == {"fused"}
    with pytest.raises(ValueError):
        mtd.set_backend(compressed, "gpu")


def test_onnx_holds_standard_conv_chains_and_matches_pytorch(compressed, x, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = mtd.export_onnx(compressed, tmp_path / "model.onnx", x)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, "a non-standard op was exported"
    assert "BatchNormalization" not in ops  # folded into the Conv before it
    # tucker 3 + cp 3 + dense 1 + cp4 4 convs; the svd Linear is two MatMul/Gemm nodes
    assert ops.count("Conv") == 11
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x, torch.randn(5, 3, 18, 14)):  # the batch dimension is dynamic
        (got,) = session.run(None, {"input": batch.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), compressed(batch), rtol=1e-4, atol=1e-4)


def test_torch_export_round_trips_with_the_fused_ops(compressed, x, tmp_path):
    program = torch.export.export(compressed, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"mtd.cp_conv2d.default", "mtd.cp4_conv2d.default", "mtd.tucker_conv2d.default"} <= targets
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2")
    torch.testing.assert_close(loaded.module()(x), compressed(x))
