"""Shared CLI helpers: user-facing errors, data and checkpoint loading, result folders."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from torch import nn


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def load_data(path: str, cache_dir: Optional[str] = None, progress: bool = True):
    """CIFAR-10 arrays from ``path`` (archive, image-folder tar or folder), with readable errors."""
    from ..data import load_cifar10

    if not Path(path).exists():
        raise CLIError(f"data file {path!r} does not exist (expected a CIFAR-10 archive such as "
                       "cifar10-jpeg.tar.gz or cifar-10-python.tar.gz)")
    try:
        return load_cifar10(path, cache_dir=cache_dir, progress=progress)
    except (ValueError, OSError, EOFError) as err:
        raise CLIError(f"cannot read data {path!r}: {_one_line(err)}") from None


def load_baseline(checkpoint: str, model_name: Optional[str], width: Optional[float]) -> nn.Module:
    """Model from an mtd checkpoint; errors if it holds another architecture than ``--model``/``--width``."""
    from ..models import build_model, load_checkpoint
    from ..models.checkpoint import load_state_dict_checked

    payload = _read_checkpoint(checkpoint)
    saved_name, kwargs = payload.get("model_name"), dict(payload.get("model_kwargs") or {})
    if "mtd_plan" in (payload.get("extra") or {}):
        raise CLIError(f"checkpoint {checkpoint!r} holds an already compressed model; pass the original "
                       "(uncompressed) checkpoint")
    if model_name is not None and saved_name is not None and model_name != saved_name:
        raise CLIError(f"checkpoint {checkpoint!r} holds a {saved_name} model, not the {model_name} "
                       "given with --model")
    if width is not None and saved_name is not None and kwargs.get("width", 1.0) != width:
        raise CLIError(f"checkpoint {checkpoint!r} holds {saved_name} width {kwargs.get('width', 1.0)}, not "
                       f"the width {width} given with --width")
    name = saved_name or model_name
    if name is None:
        raise CLIError(f"checkpoint {checkpoint!r} does not record its model; pass --model")
    if saved_name is None and width is not None:
        kwargs["width"] = width
    try:
        model = build_model(name, **kwargs)
        load_state_dict_checked(model, payload["state_dict"], source=f"checkpoint {checkpoint!r}")
    except (ValueError, TypeError) as err:
        raise CLIError(_one_line(err)) from None
    return model


def load_any_model(checkpoint: str) -> tuple[nn.Module, Any]:
    """(model, plan or None) from a baseline or a compressed checkpoint (written by ``mtd compress``)."""
    from ..models import build_model
    from ..planner import Plan, apply_plan

    payload = _read_checkpoint(checkpoint)
    extra = payload.get("extra") or {}
    if "mtd_plan" not in extra:
        return load_baseline(checkpoint, None, None), None
    plan = Plan.from_dict(json.loads(extra["mtd_plan"]))
    try:
        model = build_model(payload["model_name"], **(payload.get("model_kwargs") or {}))
        model = apply_plan(model, plan, state_dict=payload["state_dict"], decompose=False)
    except (ValueError, TypeError) as err:
        raise CLIError(_one_line(err)) from None
    return model, plan


def _read_checkpoint(path: str) -> dict:
    from ..models import load_checkpoint

    try:
        return load_checkpoint(path)
    except FileNotFoundError:
        raise CLIError(f"checkpoint {path!r} does not exist") from None
    except ValueError as err:
        raise CLIError(_one_line(err)) from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def data_loaders(arrays, batch_size: int, device, seed: int = 0, channels_last: bool = False):
    """(train loader, test loader) over the whole data set."""
    from ..data import TensorDataLoader

    train = TensorDataLoader(arrays.train_x, arrays.train_y, batch_size, train=True, device=device,
                             channels_last=channels_last, seed=seed)
    test = TensorDataLoader(arrays.test_x, arrays.test_y, 500, train=False, device=device,
                            channels_last=channels_last)
    return train, test
