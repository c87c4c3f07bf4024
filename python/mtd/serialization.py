"""Save a compressed model with its plan in one file, and load it back without redoing decompositions.

The file is an mtd checkpoint (:mod:`mtd.models.checkpoint`, written atomically) whose ``extra`` holds the
plan as JSON — the same file ``mtd compress`` writes as ``compressed.pt``. Loading rebuilds the original
architecture (a registry model from its recorded name, any other from the module or builder you pass),
puts empty decomposed layers of the planned shapes in place and loads the saved weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from torch import nn

from .models.checkpoint import PLAN_KEY, load_checkpoint, save_checkpoint

PathLike = Union[str, os.PathLike]


def save(model: nn.Module, path: PathLike, *, plan: Any, model_name: Optional[str] = None,
         model_kwargs: Optional[Mapping[str, Any]] = None) -> Path:
    """Atomically write ``model`` (compressed by ``plan``) and ``plan`` to ``path``; returns the path.

    ``model_name``/``model_kwargs`` (default: the plan's, i.e. the registry model it was made from) let
    :func:`load` rebuild the architecture without being given one.
    """
    from .planner import Plan

    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be the mtd.planner.Plan returned by compress, got {type(plan).__name__}")
    save_checkpoint(path, model, model_name=model_name if model_name is not None else plan.model_name,
                    model_kwargs=model_kwargs if model_kwargs is not None else plan.model_kwargs,
                    extra={PLAN_KEY: json.dumps(plan.to_dict())})
    return Path(path)


def load_plan(path: PathLike):
    """The :class:`~mtd.planner.Plan` stored in a file written by :func:`save` (or ``mtd compress``)."""
    return _plan_of(load_checkpoint(path), path)


def load(path: PathLike, model: Union[nn.Module, Callable[[], nn.Module], None] = None, *,
         backend: str = "fused", prepare_inference: bool = False) -> nn.Module:
    """The compressed model saved at ``path``.

    ``model`` is the original (uncompressed) architecture: a module (not modified; its weights do not
    matter) or a zero-argument builder. Registry models (``mtd.models``) need none. ``backend`` is
    "fused" (``torch.ops.mtd``) or "torch" (plain convolutions). ``prepare_inference`` returns it ready for
    inference (:func:`mtd.prepare_inference`: BatchNorm folded, ReLU fused; eval mode, not for training).
    """
    from .models import build_model
    from .planner import apply_plan

    payload = load_checkpoint(path)
    plan = _plan_of(payload, path)
    if model is None:
        name = payload.get("model_name")
        if name is None:
            raise ValueError(f"{str(path)!r} holds a model outside the mtd registry; pass its architecture: "
                             "mtd.load(path, model=MyNet()) or model=build_fn")
        original = build_model(name, **(payload.get("model_kwargs") or {}))
    elif isinstance(model, nn.Module):
        original = model
    elif callable(model):
        original = model()
        if not isinstance(original, nn.Module):
            raise TypeError(f"the model builder returned {type(original).__name__}, not an nn.Module")
    else:
        raise TypeError(f"model must be an nn.Module or a zero-argument builder, got {type(model).__name__}")
    missing = [lp.name for lp in plan.layers if lp.method != "dense" and not _has_module(original, lp.name)]
    if missing:
        raise ValueError(f"{str(path)!r} does not fit this architecture ({type(original).__name__}): it has no "
                         f"layer(s) {missing[:3]} named in the plan")
    return apply_plan(original, plan, state_dict=payload["state_dict"], decompose=False, backend=backend,
                      prepare_inference=prepare_inference)


def _plan_of(payload: dict, path: PathLike):
    from .planner import Plan

    text = (payload.get("extra") or {}).get(PLAN_KEY)
    if text is None:
        raise ValueError(f"{str(path)!r} is a checkpoint without a compression plan (an uncompressed model: "
                         "load it with mtd.models.load_model or load_weights)")
    try:
        return Plan.from_dict(json.loads(text))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{str(path)!r} holds a damaged compression plan ({err})") from None


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False
