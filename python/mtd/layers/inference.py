"""Inference preparation: fold BatchNorm into the conv before it and fuse the ReLU after it.

``prepare_inference(model)`` returns an eval-mode copy in which, inside every ``nn.Sequential``,

    conv, BatchNorm2d[, ReLU]      (conv = nn.Conv2d or a CPConv2d / CP4Conv2d / TuckerConv2d)

becomes the conv alone: the BN's eval-mode affine map is folded into the conv's last weight and
bias, and for a decomposed conv the ReLU runs in the fused op's epilogue (``layer.relu = True``);
the emptied BN / ReLU slots are removed from the Sequential (its other children keep their names, so
state-dict keys do not move; at batch 1 each empty slot would cost a Python call).  A dense ``nn.Conv2d`` keeps its ReLU module
(eager PyTorch has no conv+ReLU op to put it in).

Only *consecutive children of an nn.Sequential* (not a subclass with its own forward) count as "follows": there the conv's output feeds
nothing but the next child, so the rewrite is exact.  Patterns written in an arbitrary
``forward()`` (``self.relu(self.bn(self.conv(x)))``, residual adds) are left untouched, because a
module's attribute order says nothing about its data flow.  A module used at more than one place
in the model is never rewritten either.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Union

from torch import nn

from .base import FactorizedConv2d
from .rank_space import EmptiedSlot, to_rank_space
from .surgery import fold_batchnorm, fold_batchnorm_into

Conv = Union[nn.Conv2d, FactorizedConv2d]


def prepare_inference(model: nn.Module, rank_space: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded and ReLU fused where it is provably exact.

    With ``rank_space`` (the default), runs of consecutive convs in an ``nn.Sequential`` are then regrouped
    so that only their rank-R maps reach memory (:func:`mtd.layers.rank_space.to_rank_space`).
    The input model is not modified.  Outputs match ``model.eval()`` up to float rounding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_inference expects an nn.Module, got {type(model).__name__}")
    prepared = copy.deepcopy(model).eval()
    uses = Counter(id(m) for _, m in prepared.named_modules(remove_duplicate=False))
    for container in [m for m in prepared.modules() if _chains_children(m)]:
        _fuse_sequential(container, uses)
    if rank_space:
        to_rank_space(prepared)
    for container in [m for m in prepared.modules() if _chains_children(m)]:
        for key in [k for k, m in container._modules.items() if isinstance(m, EmptiedSlot)]:
            del container._modules[key]
    return prepared


def _chains_children(module: nn.Module) -> bool:
    """An nn.Sequential whose forward is Sequential's own (a subclass may route data differently)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _is_conv(module: nn.Module) -> bool:
    if isinstance(module, FactorizedConv2d):
        return True
    return type(module) is nn.Conv2d  # subclasses may override forward


def _fuse_sequential(seq: nn.Sequential, uses: Counter) -> None:
    """Rewrite conv -> BN [-> ReLU] runs among ``seq``'s direct children, in place."""
    keys = list(seq._modules)
    i = 0
    while i < len(keys):
        conv = seq._modules[keys[i]]
        if not _is_conv(conv) or uses[id(conv)] > 1:
            i += 1
            continue
        j = i + 1
        bn = seq._modules[keys[j]] if j < len(keys) else None
        if isinstance(bn, nn.BatchNorm2d) and uses[id(bn)] == 1 and not getattr(conv, "relu", False):
            conv = _fold(conv, bn)
            seq._modules[keys[i]] = conv
            seq._modules[keys[j]] = EmptiedSlot()
            j += 1
        relu = seq._modules[keys[j]] if j < len(keys) else None
        if isinstance(conv, FactorizedConv2d) and not conv.relu and type(relu) is nn.ReLU:
            conv.relu = True
            seq._modules[keys[j]] = EmptiedSlot()
            j += 1
        i = j


def _fold(conv: Conv, bn: nn.BatchNorm2d) -> Conv:
    if isinstance(conv, FactorizedConv2d):
        return fold_batchnorm_into(conv, bn)
    return fold_batchnorm(conv, bn)
