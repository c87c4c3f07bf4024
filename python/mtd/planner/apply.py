"""Rebuild a compressed model from the original one and a plan (deterministic, bit-exact)."""
from __future__ import annotations

import copy
from typing import Mapping, Optional

import torch
from torch import nn

from .. import methods
from ..layers import get_module, replace_module
from .factor_cache import DecompositionSettings, FactorCache
from .layer_factory import build_layer, empty_layer
from .plan import Plan


def apply_plan(model: nn.Module, plan: Plan, *, state_dict: Optional[Mapping[str, torch.Tensor]] = None,
               backend: str = "fused", cache: Optional[FactorCache] = None, inplace: bool = False,
               decompose: bool = True, prepare_inference: bool = False) -> nn.Module:
    """Return ``model`` with every planned layer replaced by its decomposed version.

    ``model`` must hold the original (uncompressed) weights the plan was made from; the weight-only
    decompositions are recomputed with the plan's seeds and warm-start chains. ``mtd.compress`` goes further
    from data (activation-aware factors, reconstruction, fine-tuning), which a plan alone cannot redo: pass
    the compressed model's ``state_dict`` (as ``mtd.load`` does) to get that model back: it is loaded on top.
    ``backend`` is "fused" (mtd_kernels) or "torch".
    ``decompose=False`` (only with ``state_dict``) skips the decompositions and builds empty layers of
    the planned shapes, which is much faster when the weights are loaded anyway. ``prepare_inference``
    returns the model ready for inference instead (:func:`mtd.prepare_inference`: eval mode, BatchNorm
    folded, ReLU fused into the fused ops; a copy even with ``inplace``).
    """
    if not decompose and state_dict is None:
        raise ValueError("apply_plan(decompose=False) needs a state_dict to fill the layers")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be an mtd.planner.Plan, got {type(plan).__name__}")
    target = model if inplace else copy.deepcopy(model)
    if cache is None:
        cache = FactorCache(settings=DecompositionSettings(**plan.decomposition))
    for lp in plan.layers:
        if lp.method == "dense":
            continue
        module = get_module(target, lp.name)
        methods.check_compressible(module, lp.method, lp.name)
        if decompose:
            factors = cache.factors(module.weight, lp.method, lp.ranks, lp.seed, lp.warm_start)
            new = build_layer(module, lp.method, factors, backend=backend)
        else:
            new = empty_layer(module, lp.method, lp.ranks, backend=backend)
        replace_module(target, lp.name, new)
    if state_dict is not None:
        from ..models.checkpoint import load_state_dict_checked

        load_state_dict_checked(target, state_dict, source="compressed state_dict")
    if prepare_inference:
        from ..layers.inference import prepare_inference as prepare

        return prepare(target)
    return target
