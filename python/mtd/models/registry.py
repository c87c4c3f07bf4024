"""Model registry: build a model by name; the name/kwargs are remembered for checkpoints."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from torch import nn

from .tiny_resnet import tiny_resnet
from .vgg import vgg11, vgg13, vgg16, vgg19

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    "vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg19": vgg19, "tiny_resnet": tiny_resnet,
}
MODEL_NAMES: Tuple[str, ...] = tuple(_BUILDERS)
_ALLOWED_KWARGS = ("num_classes", "width")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (one of :data:`MODEL_NAMES`) with ``num_classes``/``width`` kwargs.

    The returned module carries ``mtd_model_name`` and ``mtd_model_kwargs`` so that
    :func:`mtd.models.save_checkpoint` can record how to rebuild it.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    unknown = sorted(set(kwargs) - set(_ALLOWED_KWARGS))
    if unknown:
        raise TypeError(f"build_model({name!r}): unexpected argument(s) {unknown}; allowed: {_ALLOWED_KWARGS}")
    model = _BUILDERS[name](**kwargs)
    model.mtd_model_name = name
    model.mtd_model_kwargs = dict(kwargs)
    return model
