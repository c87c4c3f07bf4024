"""The compression plan: a JSON-serialisable record of what was chosen for each layer.

A plan holds, per layer, the method and ranks (plus the seed/init chain needed to recompute the
decomposition bit-for-bit), parameter and multiply-accumulate (MAC) counts before/after, reconstruction error and the
measured sensitivity. :func:`mtd.planner.apply_plan` rebuilds the compressed model from it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import methods
from ..utils import atomic_write

PLAN_FORMAT_VERSION = 1
_RENAMED = {"flops_before": "macs_before", "flops_after": "macs_after"}  # layer fields before mtd renamed them (#19)


@dataclass
class LayerPlan:
    """What to do with one compressible layer (``method='dense'`` keeps it)."""

    name: str
    kind: str  # "conv" or "linear"
    method: str
    ranks: list[int] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0  # multiply-accumulates for one sample
    macs_after: int = 0
    rel_error: float = 0.0
    sensitivity: Optional[dict[str, float]] = None  # {"loss": dloss, "accuracy": dacc} measured alone
    seed: int = 0
    warm_start: list[int] = field(default_factory=list)  # CP ranks decomposed first, each warm-starting the next

    def __post_init__(self) -> None:
        if self.method != methods.DENSE and self.method not in methods.METHODS:
            raise ValueError(f"layer {self.name!r}: unknown method {self.method!r}; allowed: "
                             f"{', '.join((methods.DENSE, *methods.names()))}")


@dataclass
class Plan:
    """A whole-network compression plan."""

    model_name: Optional[str]
    model_kwargs: dict[str, Any]
    method: str  # planner mode: mtd, thesis, cp-vbmf, ...
    layers: list[LayerPlan]
    budget: dict[str, Any] = field(default_factory=dict)  # max_drop / target_ratio / tolerances used
    results: dict[str, Any] = field(default_factory=dict)  # measured accuracies, rounds, ...
    versions: dict[str, str] = field(default_factory=dict)
    decomposition: dict[str, Any] = field(default_factory=dict)  # ALS settings (DecompositionSettings)
    config: dict[str, Any] = field(default_factory=dict)  # the CompressConfig it was made with (to_dict())
    format_version: int = PLAN_FORMAT_VERSION

    # -- totals -----------------------------------------------------------------------------------------
    def totals(self) -> dict[str, float]:
        """Sums over the planned layers (compressible layers only) and their ratios."""
        pb = sum(l.params_before for l in self.layers)
        pa = sum(l.params_after for l in self.layers)
        mb = sum(l.macs_before for l in self.layers)
        ma = sum(l.macs_after for l in self.layers)
        return {"params_before": pb, "params_after": pa, "macs_before": mb, "macs_after": ma,
                "param_ratio": pb / max(pa, 1), "macs_ratio": mb / max(ma, 1)}

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(f"no layer {name!r} in plan; layers: {[l.name for l in self.layers]}")

    # -- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["totals"] = self.totals()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        """The plan of :meth:`to_dict`'s output; ValueError for anything else (wrong or missing fields)."""
        if not isinstance(d, dict) or not isinstance(d.get("layers"), list):
            raise ValueError("not an mtd plan: expected a JSON object with a 'layers' list")
        version = d.get("format_version", PLAN_FORMAT_VERSION)
        if not isinstance(version, int) or version > PLAN_FORMAT_VERSION:
            raise ValueError(f"plan format version {version!r} is not one this mtd reads (<= {PLAN_FORMAT_VERSION})")
        layers = []
        for i, l in enumerate(d["layers"]):
            if not isinstance(l, dict):
                raise ValueError(f"not an mtd plan: layer {i} is a {type(l).__name__}, not an object")
            l = {_RENAMED.get(k, k): v for k, v in l.items()}  # older field names
            layers.append(LayerPlan(**_checked_fields(LayerPlan, l, f"layer {l.get('name', i)!r}")))
        return cls(layers=layers, **_checked_fields(cls, d, "plan"))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a plan written by :meth:`save`; ValueError on a file that is not a plan."""
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data)


_NO_DEFAULT_TYPES = {"model_name": (str, type(None)), "model_kwargs": (dict,)}  # other fields without one: str


def _json_types(f: dataclasses.Field) -> tuple:
    """The JSON types field ``f`` may hold: those of its default (a float field takes ints too)."""
    if f.default_factory is not dataclasses.MISSING:
        return (type(f.default_factory()),)
    if f.default is dataclasses.MISSING:
        return _NO_DEFAULT_TYPES.get(f.name, (str,))
    if f.default is None:
        return (dict, type(None))
    return (int, float) if isinstance(f.default, float) else (type(f.default),)


def _checked_fields(kind: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """The entries of ``values`` that are fields of the dataclass ``kind``, each checked against the JSON
    types of :func:`_json_types` (lists: of ints), so a foreign or hand-edited file fails here."""
    out = {}
    for f in dataclasses.fields(kind):
        if f.name == "layers":
            continue
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"not an mtd plan: {where} has no {f.name!r}")
            continue
        value, types = values[f.name], _json_types(f)
        ints = not isinstance(value, list) or all(type(v) is int for v in value)
        if not isinstance(value, types) or isinstance(value, bool) or not ints:
            raise ValueError(f"not an mtd plan: {where} has {f.name}={value!r}, expected "
                             f"{' or '.join(t.__name__ for t in types)}{' of ints' if list in types else ''}")
        out[f.name] = value
    return out


def current_versions() -> dict[str, str]:
    """Library versions recorded in a plan (for reproducibility)."""
    import numpy
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import tensorly

        versions["tensorly"] = tensorly.__version__
    except ImportError:  # pragma: no cover - tensorly is a dependency
        pass
    try:
        from importlib.metadata import version

        versions["mtd"] = version("mtd")
    except Exception:  # not installed as a distribution (running from source)
        versions["mtd"] = "source"
    return versions
