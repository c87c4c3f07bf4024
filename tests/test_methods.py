"""The method table (mtd/methods.py): its costs are the built layers' costs, its errors are clear, and it is the
one place a method is defined (a new entry reaches candidates, decomposition, layers and plans unchanged)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mtd import methods
from mtd.decompose import max_cp_rank
from mtd.layers import UnsupportedLayerError, conv_macs, linear_macs
from mtd.planner import CandidateGrid, FactorCache, LayerPlan
from mtd.planner.candidates import layer_candidates
from mtd.planner.layer_factory import build_layer, empty_layer
from mtd.planner.options import warm_chain

# (in, out, kernel, stride, padding, dilation, input hw): 1x1, non-square, even, strided, dilated, 'same', odd sizes
CONVS = [(9, 7, 1, 1, 0, 1, (7, 9)), (6, 4, (3, 1), (2, 1), (1, 0), 1, (11, 6)), (5, 7, (2, 5), 1, "same", 1, (8, 9)),
         (4, 9, 3, 2, 1, 2, (13, 10)), (8, 3, (5, 3), (1, 3), (2, 0), (1, 2), (9, 17))]
CONV_RANKS = {"cp": (2,), "cp4": (3,), "tucker": (2, 3)}


def _counted_macs(layer: nn.Module, x: torch.Tensor) -> int:
    """MACs of every conv / linear inside ``layer`` as it runs on ``x`` (torch backend), counted with the dense
    counters at each submodule's actual input size."""
    total = []

    def hook(module, inputs, output):
        total.append(conv_macs(module, inputs[0].shape[2:]) if isinstance(module, nn.Conv2d) else linear_macs(module))

    handles = [m.register_forward_hook(hook) for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        layer(x)
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch pads a copy: costs the same
@pytest.mark.parametrize("geometry", CONVS)
@pytest.mark.parametrize("name", ["cp", "cp4", "tucker"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_method_costs_are_the_built_layers(name, geometry, bias):
    s, t, k, stride, padding, dilation, hw = geometry
    conv = nn.Conv2d(s, t, k, stride, padding, dilation, bias=bias)
    method, ranks = methods.get(name), CONV_RANKS[name]
    layer = method.empty_layer(conv, ranks)
    assert type(layer) is method.layer and layer.backend == "torch"
    shape = tuple(conv.weight.shape)
    assert method.params(shape, ranks) + (t if bias else 0) == layer.num_parameters()
    x = torch.randn(1, s, *hw)
    out_hw = tuple(conv(x).shape[2:])
    macs = method.macs(shape, ranks, hw, out_hw)
    assert macs == _counted_macs(layer, x) == layer.macs(hw)


@pytest.mark.parametrize("features", [(1, 7), (13, 2), (9, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_svd_costs_are_the_built_layers(features, bias):
    linear = nn.Linear(*features, bias=bias)
    method = methods.get("svd")
    layer = method.empty_layer(linear, (1,))
    shape = tuple(linear.weight.shape)
    assert method.params(shape, (1,)) + (features[1] if bias else 0) == layer.num_parameters()
    assert method.macs(shape, (1,), (), ()) == _counted_macs(layer, torch.randn(1, features[0])) == layer.macs()


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (16, 16, 1, 1), (7, 5, 3, 1), (64, 32, 3, 3), (3, 200, 5, 5)])
def test_cp_rank_cap_is_where_the_table_cost_stops_saving(shape):
    dense = shape[0] * shape[1] * shape[2] * shape[3]
    for name, kind in (("cp", "cp3"), ("cp4", "cp4")):
        params = methods.get(name).params
        largest = max([r for r in range(1, dense + 1) if params(shape, (r,)) <= dense], default=1)
        assert max_cp_rank(shape, kind) == largest


def test_unknown_methods_and_wrong_layers_are_clear_errors():
    conv, linear = nn.Conv2d(4, 6, 3), nn.Linear(4, 6)
    with pytest.raises(ValueError, match=r"unknown decomposition method 'cp5'; allowed: cp, cp4, tucker, svd"):
        methods.get("cp5")
    with pytest.raises(ValueError, match="unknown decomposition method 'magic'"):
        FactorCache().factors(conv.weight, "magic", (2,))
    with pytest.raises(UnsupportedLayerError, match="unknown method 'magic'; allowed: cp, cp4, tucker, svd"):
        build_layer(conv, "magic", None)
    with pytest.raises(UnsupportedLayerError, match=r"method 'svd' needs an nn.Linear, and it is an nn.Conv2d"):
        empty_layer(conv, "svd", (2,))
    with pytest.raises(UnsupportedLayerError, match=r"method 'tucker' needs an nn.Conv2d, and it is an nn.Linear"):
        methods.check_compressible(linear, "tucker")
    with pytest.raises(ValueError, match=r"method 'cp' takes one rank, got \(2, 3\)"):
        empty_layer(conv, "cp", (2, 3))
    with pytest.raises(ValueError, match="does not warm-start"):
        FactorCache().factors(conv.weight, "tucker", (2, 2), warm_start=(3,))
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        LayerPlan("x", "conv", "magic")


def test_a_new_entry_is_the_only_change_a_method_needs(monkeypatch):
    """A copy of the table with one more method (CP3 code under another name, tried at the CP4 grid's ratios):
    candidates, warm starts, decomposition, layers and plans take it with no other edit."""
    fake = dataclasses.replace(methods.get("cp"), name="fake", grid_field="cp4_ratios")
    monkeypatch.setattr(methods, "METHODS", {**methods.METHODS, "fake": fake})
    conv = nn.Conv2d(12, 20, 3, padding=1)
    grid = CandidateGrid(cp4_ratios=(4, 8, 16), methods=("fake",))
    cands = layer_candidates(conv, grid)
    cp_at_those_ratios = layer_candidates(conv, CandidateGrid(cp_ratios=(4, 8, 16), methods=("cp",)))
    assert [c.method for c in cands] == ["fake"] * 3
    assert [c.ranks for c in cands] == [c.ranks for c in cp_at_those_ratios]
    assert warm_chain(cands[-1], cands) == (cands[0].ranks[0], cands[1].ranks[0])
    cache = FactorCache()
    factors = cache.factors(conv.weight, "fake", cands[-1].ranks, warm_start=warm_chain(cands[-1], cands))
    assert cache.misses == 3  # each higher rank decomposed first, as for CP
    layer = build_layer(conv, "fake", factors)
    x = torch.randn(2, 12, 6, 6)
    torch.testing.assert_close(layer(x), layer.to_dense()(x), rtol=1e-4, atol=1e-4)
    assert LayerPlan("conv", "conv", "fake", list(cands[-1].ranks)).method == "fake"
    assert layer_candidates(nn.Linear(16, 16), grid)[0].method == "svd"  # a Linear still tries its own method
    with pytest.raises(UnsupportedLayerError, match="needs an nn.Conv2d"):
        methods.check_compressible(nn.Linear(4, 4), "fake")
