"""Turn factors into ``mtd.layers`` modules, count their cost, and switch their backend."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..layers import CP4Conv2d, CPConv2d, LowRankLinear, TuckerConv2d, check_compressible
from ..layers._factorized import FactorizedModule
from ..layers.counting import conv_flops, linear_flops

_CONV_CLASSES = {"cp": CPConv2d, "cp4": CP4Conv2d, "tucker": TuckerConv2d}


def empty_layer(module: nn.Module, method: str, ranks: Sequence[int], backend: str = "torch") -> nn.Module:
    """An ``mtd.layers`` module shaped like ``module`` decomposed by ``method`` at ``ranks`` (weights unset)."""
    check_compressible(module, method)
    ranks = [int(r) for r in ranks]
    kw = dict(device=module.weight.device, dtype=module.weight.dtype)
    if method == "svd":
        return LowRankLinear(module.in_features, module.out_features, ranks[0], bias=module.bias is not None,
                             backend=backend, **kw)
    rank_kw = {"ranks": tuple(ranks)} if method == "tucker" else {"rank": ranks[0]}
    return _CONV_CLASSES[method](module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                                 padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
                                 backend=backend, **rank_kw, **kw)


def build_layer(module: nn.Module, method: str, factors: Any, backend: str = "torch") -> nn.Module:
    """The decomposed replacement of ``module`` holding ``factors`` (and ``module``'s bias)."""
    check_compressible(module, method)
    if method == "svd":
        return LowRankLinear.from_linear(module, factors.rank, backend=backend, factors=factors)
    ranks = tuple(factors.ranks) if method == "tucker" else factors.rank
    return _CONV_CLASSES[method].from_conv(module, ranks, backend=backend, factors=factors)


def dense_cost(module: nn.Module, input_hw: tuple) -> tuple[int, int]:
    """(parameters, MACs) of a dense Conv2d / Linear for one input of spatial size ``input_hw``."""
    params = sum(p.numel() for p in module.parameters())
    if isinstance(module, nn.Conv2d):
        return params, int(conv_flops(module, input_hw))
    return params, int(linear_flops(module))


def layer_cost(layer: nn.Module, input_hw: tuple) -> tuple[int, int]:
    """(parameters, MACs) of a decomposed layer."""
    return int(layer.num_parameters()), int(layer.flops(input_hw))


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every decomposed layer in ``model`` to ``backend`` ("fused" or "torch")."""
    for m in model.modules():
        if isinstance(m, FactorizedModule):
            m.backend = backend
    return model
