"""Model surgery: BatchNorm folding; getting, replacing and swapping submodules by dotted name; and the one
walker that lists the layers mtd can decompose (:func:`compressible_layers`)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ._factorized import FactorizedModule
from .base import FactorizedConv2d
from .compressible import is_compressible
from .low_rank_linear import LowRankLinear

DecomposedLayer = Union[FactorizedConv2d, LowRankLinear]


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with bn(y) == y * scale + shift in eval mode."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"expected a BatchNorm layer, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.num_features != channels:
        raise ValueError(f"BatchNorm has {bn.num_features} features but the layer has {channels} output channels")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


@torch.no_grad()
def _fold_into(module: Union[nn.Conv2d, nn.Linear], bn) -> None:
    """Scale the output channels of ``module``'s weight and fold the shift into its bias (in place)."""
    scale, shift = _bn_scale_shift(bn, module.weight.shape[0])
    w = module.weight
    old_bias = module.bias.double() if module.bias is not None else torch.zeros_like(shift)
    w.copy_(w.double() * scale.view(-1, *([1] * (w.dim() - 1))))
    new_bias = (old_bias * scale + shift).to(w.dtype)
    if module.bias is None:
        module.bias = nn.Parameter(new_bias)
    else:
        module.bias.copy_(new_bias)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """A new nn.Conv2d equal to ``bn(conv(x))`` in eval mode (``conv`` is left unchanged)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    w = conv.weight
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=w.device, dtype=w.dtype)
    with torch.no_grad():
        folded.weight.copy_(w)
        if conv.bias is not None:
            folded.bias.copy_(conv.bias)
        else:
            folded.bias.zero_()
    _fold_into(folded, bn)
    return folded


def fold_batchnorm_into(layer: DecomposedLayer, bn: nn.modules.batchnorm._BatchNorm) -> DecomposedLayer:
    """Fold ``bn`` into a decomposed layer's last factor and bias, in place; returns the layer.

    A layer built with bias=False gains a bias.  Only valid for eval-mode BN (its running statistics).
    """
    if not isinstance(layer, (FactorizedConv2d, LowRankLinear)):
        raise TypeError(f"expected a decomposed layer (CPConv2d, CP4Conv2d, TuckerConv2d, LowRankLinear), "
                        f"got {type(layer).__name__}; use fold_batchnorm for nn.Conv2d")
    if getattr(layer, "relu", False):
        raise ValueError("cannot fold a BatchNorm into a layer with relu=True (the BN would come after the ReLU)")
    _fold_into(layer.last, bn)
    return layer


class NoSuchLayerError(KeyError, ValueError):
    """A dotted layer name that does not exist in the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted ``name`` ('' is the model itself; Sequential indices like 'features.3')."""
    module = model
    if name == "":
        return module
    for depth, part in enumerate(name.split(".")):
        children = module._modules
        if part not in children or children[part] is None:
            where = ".".join(name.split(".")[:depth]) or "the model"
            raise NoSuchLayerError(f"no submodule {name!r}: {where} has no child {part!r} "
                                   f"(children: {list(children)})")
        module = children[part]
    return module


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """Put ``new_module`` at dotted ``name`` and return the module it replaced."""
    if not isinstance(new_module, nn.Module):
        raise TypeError(f"new_module must be an nn.Module, got {type(new_module).__name__}")
    if name == "":
        raise ValueError("cannot replace the model itself (empty name)")
    parent_name, _, child = name.rpartition(".")
    old = get_module(model, name)
    get_module(model, parent_name)._modules[child] = new_module
    return old


@contextlib.contextmanager
def swapped(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Context manager: ``model`` with the named layers replaced, the originals put back afterwards."""
    originals = {}
    try:
        for name, new in replacements.items():
            originals[name] = replace_module(model, name, new)
        yield model
    finally:
        for name, old in originals.items():
            replace_module(model, name, old)


FilterFn = Callable[[nn.Module, str], bool]


def compressible_layers(model: nn.Module, filter_fn: Optional[FilterFn] = None) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every layer mtd can decompose, in model order, for which ``filter_fn(module, name)``
    holds (all of them without a filter).

    Already-decomposed layers are skipped with everything inside them, so compressing a compressed model
    never decomposes its factors by accident (a Tucker core is itself an ungrouped kxk conv).
    """
    found: List[Tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for child_name, child in module._modules.items():
            if child is None or isinstance(child, FactorizedModule):
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if is_compressible(child):
                if filter_fn is None or filter_fn(child, name):
                    found.append((name, child))
            else:
                walk(child, name)

    walk(model, "")
    return found
