"""Checkpoint files: ``{"format", "version", "model_name", "model_kwargs", "state_dict", "extra"}``.

Writes are atomic (temporary file in the same folder, then ``os.replace``). Loading reports a
missing file, a corrupt/truncated file and a checkpoint of a different model with clear errors.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from ..utils.atomic import atomic_write
from .registry import build_model

CHECKPOINT_FORMAT = "mtd-checkpoint"
CHECKPOINT_VERSION = 1
PLAN_KEY = "mtd_plan"  # the key in ``extra`` of a compressed model's plan (JSON), see mtd.save
PathLike = Union[str, os.PathLike]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel/compiled wrapper (or ``model`` itself)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: PathLike, model: nn.Module, *, model_name: Optional[str] = None,
                    model_kwargs: Optional[Mapping[str, Any]] = None,
                    extra: Optional[Mapping[str, Any]] = None) -> None:
    """Atomically save ``model``'s weights with what is needed to rebuild it.

    ``model_name``/``model_kwargs`` default to what :func:`build_model` attached to the model.
    ``extra`` must hold only tensors, numbers, strings and plain containers (it is loaded with
    ``weights_only=True``).
    """
    model = unwrap_model(model)
    name = model_name if model_name is not None else getattr(model, "mtd_model_name", None)
    kwargs = model_kwargs if model_kwargs is not None else getattr(model, "mtd_model_kwargs", {})
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_name": name,
        "model_kwargs": dict(kwargs), "state_dict": model.state_dict(), "extra": dict(extra or {}),
    }
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: PathLike, map_location: Any = "cpu", *, weights_only: bool = True) -> Dict[str, Any]:
    """Load a checkpoint dict written by :func:`save_checkpoint`.

    Raises FileNotFoundError for a missing file and ValueError for anything that is not a
    readable mtd checkpoint (truncated, corrupt, or another kind of file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=weights_only)
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, UnicodeDecodeError, IndexError, KeyError) as err:
        raise ValueError(f"{str(path)!r} is not a valid mtd checkpoint (could not be read: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a valid mtd checkpoint (no '{CHECKPOINT_FORMAT}' header; "
                         "was it written by mtd.models.save_checkpoint?)")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {payload['version']}; this mtd reads "
                         f"versions <= {CHECKPOINT_VERSION}")
    return payload


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                            source: str = "checkpoint") -> None:
    """``model.load_state_dict(state_dict)`` with a readable error naming the first mismatching keys."""
    model = unwrap_model(model)
    expected = model.state_dict()
    problems: List[str] = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)})"
                   for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches {_first(wrong_shape)}")
    if problems:
        raise ValueError(f"{source} does not match the model ({type(model).__name__}); it was probably "
                         f"saved from another architecture or width: " + "; ".join(problems))
    model.load_state_dict(state_dict)


def load_weights(model: nn.Module, path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load the weights of checkpoint ``path`` into an existing ``model``; returns the checkpoint dict."""
    payload = load_checkpoint(path, map_location)
    load_state_dict_checked(model, payload["state_dict"], source=f"checkpoint {str(path)!r}")
    return payload


def load_model(path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the architecture recorded in checkpoint ``path`` and load its weights."""
    payload = load_checkpoint(path, map_location)
    if PLAN_KEY in (payload.get("extra") or {}):
        raise ValueError(f"checkpoint {str(path)!r} holds a compressed model; load it with mtd.load(path)")
    name = payload.get("model_name")
    if name is None:
        raise ValueError(f"checkpoint {str(path)!r} has no model name; build the model yourself and use "
                         "mtd.models.load_weights")
    model = build_model(name, **payload.get("model_kwargs", {}))
    load_state_dict_checked(model, payload["state_dict"], source=f"checkpoint {str(path)!r}")
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    return model


def _first(items: List[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")
