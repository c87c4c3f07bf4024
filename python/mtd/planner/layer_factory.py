"""Turn factors into ``mtd.layers`` modules, count their cost, and switch their backend."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from .. import methods
from ..layers._factorized import FactorizedModule
from ..layers.counting import conv_macs, linear_macs


def empty_layer(module: nn.Module, method: str, ranks: Sequence[int], backend: str = "torch") -> nn.Module:
    """An ``mtd.layers`` module shaped like ``module`` decomposed by ``method`` at ``ranks`` (weights unset)."""
    methods.check_compressible(module, method)
    return methods.get(method).empty_layer(module, ranks, backend)


def build_layer(module: nn.Module, method: str, factors: Any, backend: str = "torch") -> nn.Module:
    """The decomposed replacement of ``module`` holding ``factors`` (and ``module``'s bias)."""
    methods.check_compressible(module, method)
    return methods.get(method).build_layer(module, factors, backend)


def dense_cost(module: nn.Module, input_hw: tuple) -> tuple[int, int]:
    """(parameters, MACs) of a dense Conv2d / Linear for one input of spatial size ``input_hw``."""
    params = sum(p.numel() for p in module.parameters())
    if isinstance(module, nn.Conv2d):
        return params, int(conv_macs(module, input_hw))
    return params, int(linear_macs(module))


def layer_cost(layer: nn.Module, input_hw: tuple) -> tuple[int, int]:
    """(parameters, MACs) of a decomposed layer."""
    return int(layer.num_parameters()), int(layer.macs(input_hw))


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every decomposed layer in ``model`` to ``backend`` ("fused" or "torch")."""
    for m in model.modules():
        if isinstance(m, FactorizedModule):
            m.backend = backend
    return model
