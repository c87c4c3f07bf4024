"""mtd — compress CNNs by mixed tensor decomposition (CP / CP4 / Tucker-2 per layer) and run the
compressed layers on fused kernels (``torch.ops.mtd``).

Quick start::

    import mtd
    model = mtd.models.vgg11(width=0.25)
    compressed, plan = mtd.compress(model, (train_images, train_labels), max_drop=1.0)

Submodules load on first use, so ``import mtd`` stays light; importing never touches a GPU.
"""
from __future__ import annotations

import importlib
from typing import Any

import mtd_kernels as kernels  # noqa: F401  (defines and registers torch.ops.mtd.*)

__version__ = "0.1.0"

_SUBMODULES = ("decompose", "layers", "planner", "models", "data", "train", "report", "utils", "cli")
_EXPORTS = {
    "compress": "mtd.planner",
    "apply_plan": "mtd.planner",
    "Plan": "mtd.planner",
    "CPConv2d": "mtd.layers",
    "CP4Conv2d": "mtd.layers",
    "TuckerConv2d": "mtd.layers",
    "LowRankLinear": "mtd.layers",
    "cp_decompose_conv": "mtd.decompose",
    "cp4_decompose_conv": "mtd.decompose",
    "tucker2_decompose_conv": "mtd.decompose",
    "svd_decompose": "mtd.decompose",
    "load_cifar10": "mtd.data",
    "build_model": "mtd.models",
    "prepare_inference": "mtd.layers",
    "save": "mtd.serialization",
    "load": "mtd.serialization",
    "set_backend": "mtd.planner.layer_factory",
    "export_onnx": "mtd.export",
}

__all__ = ["kernels", "__version__", *_SUBMODULES, *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"mtd.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
