"""mtd.prepare_inference: BatchNorm folding and ReLU fusion must not change a model's outputs."""
import copy

import pytest
import torch
from torch import nn

import mtd
from mtd.layers import CP4Conv2d, CPConv2d, FactorizedConv2d, TuckerConv2d, get_module, replace_module


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial eval statistics and affine parameters, so a missed or wrong fold shows."""
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))


@pytest.fixture(scope="module")
def compressed_vgg() -> nn.Module:
    """VGG11 at width 1/4 with convs 1, 3, 4, 5 replaced by CP3, Tucker-2, CP4, CP3 layers (built once)."""
    torch.manual_seed(0)
    model = mtd.models.build_model("vgg11", width=0.25)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    makers = {
        convs[1]: lambda c: CPConv2d.from_conv(c, rank=8, backend="fused"),
        convs[3]: lambda c: TuckerConv2d.from_conv(c, ranks=(8, 8), backend="fused"),
        convs[4]: lambda c: CP4Conv2d.from_conv(c, rank=8, backend="fused"),
        convs[5]: lambda c: CPConv2d.from_conv(c, rank=12, backend="fused"),
    }
    for name, make in makers.items():
        replace_module(model, name, make(get_module(model, name)))
    _randomise_bn(model)
    return model


def _with_backend(model: nn.Module, backend: str) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, FactorizedConv2d):
            m.backend = backend
    return model


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    rel = (actual - expected).norm() / expected.norm()
    assert rel < 1e-5, f"relative error {rel:.3g}"


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_vgg_bn_folded_relu_fused(compressed_vgg, backend):
    model = _with_backend(compressed_vgg, backend)
    x = torch.randn(3, 3, 32, 32)
    expected = model.eval()(x)
    prepared = mtd.prepare_inference(model, rank_space=False)

    _assert_close(prepared(x), expected)
    kinds = [type(m) for m in prepared.modules()]
    assert nn.BatchNorm2d not in kinds
    factorized = [m for m in prepared.modules() if isinstance(m, FactorizedConv2d)]
    assert len(factorized) == 4 and all(m.relu and m.has_bias for m in factorized)
    # ReLU modules remain only after the 4 dense convs (eager PyTorch has no conv+ReLU op)
    assert kinds.count(nn.ReLU) == 4
    assert not prepared.training
    # the original is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert not any(m.relu for m in model.modules() if isinstance(m, FactorizedConv2d))


def test_channels_last_and_double_prepare(compressed_vgg):
    model = copy.deepcopy(compressed_vgg).eval()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    prepared = mtd.prepare_inference(mtd.prepare_inference(model))  # a second pass finds nothing to do
    _assert_close(prepared(x), model(x))


class _SkipSequential(nn.Sequential):
    """A Sequential subclass whose forward is not a chain: BN must not be folded into its conv."""

    def forward(self, x):
        return self[1](x) + self[0](x)


class _Residual(nn.Module):
    """BN and ReLU reached through forward(), a skip connection and a conv reused twice."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv = CPConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1), rank=6)
        self.bn = nn.BatchNorm2d(8)  # follows self.conv in forward(), not in a Sequential
        self.relu = nn.ReLU()
        self.shared = nn.Conv2d(8, 8, 1)
        self.tail = nn.Sequential(self.shared, nn.BatchNorm2d(8))  # shared is also used on its own
        self.skip = _SkipSequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        y = self.relu(self.body(y) + x)
        return self.skip(self.tail(y) + self.shared(x))


def test_non_sequential_model_stays_correct():
    model = _Residual()
    _randomise_bn(model)
    x = torch.randn(2, 8, 10, 10)
    expected = model.eval()(x)
    prepared = mtd.prepare_inference(model)

    _assert_close(prepared(x), expected)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.body)  # inside a Sequential: folded (slot removed)
    assert isinstance(prepared.bn, nn.BatchNorm2d) and not prepared.conv.relu  # forward() code: kept
    assert isinstance(prepared.tail[1], nn.BatchNorm2d)  # a module used twice: kept
    assert isinstance(prepared.skip[1], nn.BatchNorm2d)  # a Sequential subclass with its own forward: kept


def test_tiny_resnet():
    model = mtd.models.build_model("tiny_resnet", width=0.5)
    _randomise_bn(model)
    x = torch.randn(2, 3, 32, 32)
    expected = model.eval()(x)
    prepared = mtd.prepare_inference(model)
    _assert_close(prepared(x), expected)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())


def test_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        mtd.prepare_inference(lambda x: x)
