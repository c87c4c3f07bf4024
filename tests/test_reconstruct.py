"""Sequential local reconstruction (mtd.recovery.reconstruct): it lowers the output error it targets."""
import copy

import pytest
import torch
from torch import nn

from mtd.layers import CPConv2d, LowRankLinear, TuckerConv2d, get_module, replace_module
from mtd.recovery.reconstruct import ReconstructionConfig, capture, execution_order, reconstruct


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, stride=2), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()


def _decomposed(net: nn.Module) -> nn.Module:
    model = copy.deepcopy(net)
    replace_module(model, "3", CPConv2d.from_conv(get_module(net, "3"), rank=4, backend="torch", n_iter_max=20))
    replace_module(model, "6", TuckerConv2d.from_conv(get_module(net, "6"), ranks=(4, 4), backend="torch"))
    replace_module(model, "11", LowRankLinear.from_linear(get_module(net, "11"), 3))
    return model


def _images(n_batches=4, batch=16):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 12, 12, generator=g) for _ in range(n_batches)]


def _output_error(a: nn.Module, b: nn.Module, images) -> float:
    with torch.no_grad():
        num = sum(float(((a(x) - b(x)) ** 2).sum()) for x in images)
        den = sum(float((b(x) ** 2).sum()) for x in images)
    return (num / den) ** 0.5


def test_reconstruction_lowers_every_layer_error_and_the_network_error():
    net = _net()
    model = _decomposed(net)
    images, fresh = _images(), _images(2, 32)
    before = _output_error(model, net, fresh)
    results = reconstruct(model, net, images, ReconstructionConfig(steps=60, lr=3e-3))
    assert [r.name for r in results] == ["3", "6", "11"]  # network order, decomposed layers only
    for r in results:
        assert r.kept and r.error_after < r.error_before, r
    assert _output_error(model, net, fresh) < 0.8 * before  # also on images it did not see
    assert not model.training


def test_closed_form_solve_recovers_a_planted_last_factor():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    exact = CPConv2d(8, 12, 3, rank=5, padding=1, backend="torch")  # the layer is exactly rank 5
    with torch.no_grad():
        conv.weight.copy_(exact.dense_weight())
        conv.bias.copy_(exact.last.bias)
    net, model = nn.Sequential(conv).eval(), nn.Sequential(copy.deepcopy(exact)).eval()
    with torch.no_grad():  # corrupt the last factor and the bias only
        model[0].last.weight.mul_(0.3).add_(0.1)
        model[0].last.bias.zero_()
    (r,) = reconstruct(model, net, [torch.randn(8, 8, 10, 10)], ReconstructionConfig(steps=0))
    assert r.error_before > 0.3 and r.error_after < 1e-4


def test_memory_bound_caps_the_captured_images():
    net = _net()
    model = _decomposed(net)
    per_image = (16 * 12 * 12 + 24 * 6 * 6) * 4  # layer "3": input (16, 12, 12), output (24, 6, 6)
    cfg = ReconstructionConfig(steps=0, max_bytes=10 * per_image)
    results = reconstruct(model, net, _images(), cfg, names=["3"])
    assert [r.images for r in results] == [10]


class _Branchy(nn.Module):
    """Not a Sequential: two convs read the same input and are summed."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(6, 10, 3, padding=1)
        self.b = nn.Conv2d(6, 10, 1)
        self.head = nn.Conv2d(10, 10, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.a(x) + self.b(x)))


def test_works_on_models_that_are_not_sequential():
    torch.manual_seed(0)
    net = _Branchy().eval()
    model = copy.deepcopy(net)
    replace_module(model, "head", CPConv2d.from_conv(net.head, rank=3, backend="torch", n_iter_max=10))
    replace_module(model, "a", TuckerConv2d.from_conv(net.a, ranks=(2, 3), backend="torch"))
    images = [torch.randn(8, 6, 9, 9) for _ in range(3)]
    assert execution_order(model, ["head", "a"], images[0]) == ["a", "head"]
    before = _output_error(model, net, images)
    results = reconstruct(model, net, images, ReconstructionConfig(steps=40, lr=3e-3))
    assert [r.name for r in results] == ["a", "head"]
    assert _output_error(model, net, images) < before


def test_capture_stops_at_the_layer():
    net = _net()
    calls = []
    net[11].register_forward_hook(lambda *a: calls.append(1))
    x = capture(net, "3", [torch.randn(2, 3, 12, 12)], output=False)
    assert x.shape == (2, 16, 12, 12) and not calls  # the classifier never ran


def test_bad_input_is_rejected():
    net = _net()
    model = _decomposed(net)
    with pytest.raises(ValueError, match="not decomposed"):
        reconstruct(model, net, _images(), names=["0"])
    with pytest.raises(ValueError, match="at least one batch"):
        reconstruct(model, net, [])
    with pytest.raises(ValueError, match="steps"):
        ReconstructionConfig(steps=-1)
    with pytest.raises(ValueError, match="images"):
        ReconstructionConfig(images=0)
