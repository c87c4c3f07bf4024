"""Shared CLI helpers: user-facing errors, data and checkpoint loading, result folders."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

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


def add_model_args(p, model_help: str) -> None:
    """``--model`` and the normalisation of a user's model (``--mean``/``--std``, default CIFAR-10's)."""
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--mean", default=None, help="per-channel mean the model was trained with, in [0, 1] units, "
                   "e.g. 0.485,0.456,0.406 (default: CIFAR-10's)")
    p.add_argument("--std", default=None, help="per-channel std (with --mean), e.g. 0.229,0.224,0.225")


def is_builder_spec(model: Optional[str]) -> bool:
    """``--model module:function`` (a user's architecture) rather than a registry name."""
    return model is not None and ":" in model


def import_builder(spec: str) -> Callable[[], nn.Module]:
    """The zero-argument model builder named ``module:function`` (the module must be importable)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        builder = importlib.import_module(module_name)
        for part in attr.split("."):
            builder = getattr(builder, part)
    except (ImportError, AttributeError) as err:
        raise CLIError(f"--model {spec!r}: cannot import it ({_one_line(err)}); give module:function with the "
                       "module on PYTHONPATH") from None
    if not callable(builder):
        raise CLIError(f"--model {spec!r} is not callable")
    return builder


def build_user_model(spec: str) -> nn.Module:
    """Call the ``module:function`` builder; its result must be an nn.Module."""
    try:
        model = import_builder(spec)()
    except TypeError as err:
        raise CLIError(f"--model {spec!r} must build the model without arguments ({_one_line(err)})") from None
    if not isinstance(model, nn.Module):
        raise CLIError(f"--model {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def load_baseline(checkpoint: str, model_name: Optional[str], width: Optional[float]) -> nn.Module:
    """The uncompressed model of ``checkpoint``.

    With ``--model module:function`` the checkpoint may be a plain ``state_dict`` (``torch.save(model.
    state_dict(), path)``) or an mtd checkpoint; otherwise it is an mtd checkpoint of a registry model,
    checked against ``--model``/``--width``.
    """
    from ..models import build_model
    from ..models.checkpoint import PLAN_KEY, load_state_dict_checked

    if is_builder_spec(model_name):
        model = build_user_model(model_name)
        try:
            load_state_dict_checked(model, _read_state_dict(checkpoint), source=f"checkpoint {checkpoint!r}")
        except ValueError as err:
            raise CLIError(_one_line(err)) from None
        return model
    payload = _read_checkpoint(checkpoint)
    saved_name, kwargs = payload.get("model_name"), dict(payload.get("model_kwargs") or {})
    if PLAN_KEY in (payload.get("extra") or {}):
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
        raise CLIError(f"checkpoint {checkpoint!r} does not record its model; pass --model (a registry name or "
                       "module:function)")
    if saved_name is None and width is not None:
        kwargs["width"] = width
    try:
        model = build_model(name, **kwargs)
        load_state_dict_checked(model, payload["state_dict"], source=f"checkpoint {checkpoint!r}")
    except (ValueError, TypeError) as err:
        raise CLIError(_one_line(err)) from None
    return model


def load_any_model(checkpoint: str, model_spec: Optional[str] = None) -> tuple[nn.Module, Any]:
    """(model, plan or None) from a baseline or a compressed checkpoint (written by ``mtd compress``).

    ``model_spec`` (``module:function``) is the architecture of a model outside the registry.
    """
    from ..models.checkpoint import PLAN_KEY
    from ..serialization import load, load_plan

    if is_builder_spec(model_spec) and not _is_compressed(checkpoint):
        return load_baseline(checkpoint, model_spec, None), None
    payload = _read_checkpoint(checkpoint)
    if PLAN_KEY not in (payload.get("extra") or {}):
        return load_baseline(checkpoint, model_spec, None), None
    architecture = import_builder(model_spec) if is_builder_spec(model_spec) else None
    try:
        return load(checkpoint, model=architecture), load_plan(checkpoint)
    except (ValueError, TypeError) as err:
        raise CLIError(_one_line(err)) from None


def _is_compressed(path: str) -> bool:
    from ..models.checkpoint import CHECKPOINT_FORMAT, PLAN_KEY

    payload = _torch_load(path)
    return isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT and \
        PLAN_KEY in (payload.get("extra") or {})


def _read_state_dict(path: str) -> Mapping[str, Any]:
    """The weights in ``path``: a plain ``state_dict`` or an mtd checkpoint's."""
    import torch

    from ..models.checkpoint import CHECKPOINT_FORMAT

    payload = _torch_load(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return payload["state_dict"]
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    raise CLIError(f"checkpoint {path!r} is neither a state_dict (torch.save(model.state_dict(), path)) nor an "
                   "mtd checkpoint")


def _torch_load(path: str) -> Any:
    import torch

    if not Path(path).is_file():
        raise CLIError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same user error)
        raise CLIError(f"checkpoint {path!r} cannot be read ({type(err).__name__}: {_one_line(err)})") from None


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


def data_loaders(arrays, batch_size: int, device, seed: int = 0, channels_last: bool = False,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 rank: int = 0, world_size: int = 1):
    """(train loader, test loader) over the whole data set (CIFAR-10's mean/std unless given); ``rank`` /
    ``world_size``: the training loader yields this rank's shard."""
    from ..data import CIFAR10_MEAN, CIFAR10_STD, TensorDataLoader

    norm = dict(mean=mean or CIFAR10_MEAN, std=std or CIFAR10_STD)
    train = TensorDataLoader(arrays.train_x, arrays.train_y, batch_size, train=True, device=device,
                             channels_last=channels_last, seed=seed, rank=rank, world_size=world_size, **norm)
    test = TensorDataLoader(arrays.test_x, arrays.test_y, 500, train=False, device=device,
                            channels_last=channels_last, **norm)
    return train, test


def parse_floats(text: Optional[str], name: str) -> Optional[tuple[float, ...]]:
    """``"0.485,0.456,0.406"`` -> a tuple of floats (None stays None)."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"{name} must be comma-separated numbers, got {text!r}") from None


def launched_by_torchrun() -> bool:
    """True when torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def under_torchrun(command: Callable[[argparse.Namespace, Any], int], args: argparse.Namespace) -> int:
    """``command(args, device)``; under ``torchrun`` (WORLD_SIZE > 1) in the process group it describes (NCCL
    on GPUs, gloo on CPUs, this rank's device), rank 0 alone printing, the group left at the end."""
    if not launched_by_torchrun():
        return command(args, None)
    from ..train.distributed import cleanup, init_distributed

    info = init_distributed(device=args.device)
    try:
        if info.is_main:
            return command(args, info.device)
        with contextlib.redirect_stdout(io.StringIO()):  # the other ranks work silently
            return command(args, info.device)
    finally:
        cleanup()
