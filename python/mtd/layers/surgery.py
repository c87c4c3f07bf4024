"""Model surgery: BatchNorm folding, and getting / replacing / listing submodules by dotted name."""
from __future__ import annotations

from typing import Iterator, Tuple, Union

import torch
from torch import nn

from .base import FactorizedConv2d
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


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted ``name`` ('' is the model itself; Sequential indices like 'features.3')."""
    module = model
    if name == "":
        return module
    for depth, part in enumerate(name.split(".")):
        children = module._modules
        if part not in children or children[part] is None:
            where = ".".join(name.split(".")[:depth]) or "the model"
            raise KeyError(f"no submodule {name!r}: {where} has no child {part!r} (children: {list(children)})")
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


def _supported_conv(module: nn.Conv2d) -> bool:
    return module.groups == 1 and module.padding_mode == "zeros"


def iter_compressible(model: nn.Module, include_unsupported: bool = False) -> Iterator[Tuple[str, nn.Module]]:
    """(name, module) of every nn.Conv2d / nn.Linear not already inside a decomposed layer.

    Grouped / depthwise convs and convs with a padding_mode other than 'zeros' are skipped unless
    ``include_unsupported``.
    """
    def walk(module: nn.Module, prefix: str):
        for child_name, child in module._modules.items():
            if child is None:
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, (FactorizedConv2d, LowRankLinear)):
                continue
            if isinstance(child, nn.Conv2d):
                if include_unsupported or _supported_conv(child):
                    yield name, child
            elif isinstance(child, nn.Linear):
                yield name, child
            else:
                yield from walk(child, name)

    yield from walk(model, "")
