"""Rank space: run consecutive convs of an ``nn.Sequential`` so that only rank-R maps reach memory.

A decomposed conv is ``first 1x1 (S->R1) -> spatial (R1->R2) -> last 1x1 (R2->T)``; in a plain model the
T-channel output of layer i is written to memory and read back by layer i+1's first 1x1, and at the ranks
of a compressed model those T-channel maps are most of the memory traffic. :func:`to_rank_space` regroups
a run of convs into

    entry:   layer 1's first 1x1                                 (absent when layer 1 is dense)
    bridges: torch.ops.mtd.rank_bridge per layer: spatial -> last 1x1 + bias [ReLU] [2x2 max-pool]
             -> the next layer's first 1x1 (the last bridge of the run stops at its T channels)

Only decomposed convs on the ``"fused"`` backend are regrouped (``"torch"`` asks for standard modules).
The run keeps its per-layer modules beside the bridges and, on the CPU, runs whichever measured faster
for the input's shape (:class:`RankSpaceRun`): the per-layer ops, the bridges one op call each, or the whole
run as one ``torch.ops.mtd.rank_run`` call on factors packed once.
A dense ``nn.Conv2d`` takes part with its kernel as the spatial stage and no last 1x1 (its input is a
T-channel map: nothing to save there, but its output is not written). Between two convs of a run only
``nn.Identity`` (left by BatchNorm folding), a ``ReLU`` (the layer's own, fused) and one ``MaxPool2d(2, 2)``
may stand. Models outside ``nn.Sequential`` (residual blocks, custom ``forward``) are left as they are.
Call it on a prepared model (:func:`mtd.prepare_inference` does, with ``rank_space=True``): BatchNorm
must already be folded, so a conv followed by BatchNorm ends a run.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

import mtd_kernels  # registers torch.ops.mtd
from mtd_kernels.ops.rank_run import bridge_meta

from .base import FactorizedConv2d


class EmptiedSlot(nn.Identity):
    """The placeholder of a module moved elsewhere (into a rank-space run, or a BatchNorm folded and a ReLU fused
    by :func:`mtd.prepare_inference`, which removes these slots when it is done)."""


_EMPTY = (nn.Identity, EmptiedSlot)  # exactly these: a subclass of Identity may have a forward of its own


class RankBridge(nn.Module):
    """One ``torch.ops.mtd.rank_bridge`` call with its weights (see ``mtd_kernels/ops/rank_bridge.py``)."""

    def __init__(self, spatial: List[torch.Tensor], w_last: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                 w_next: Optional[torch.Tensor], stride, padding, dilation, relu: bool, pool: bool):
        super().__init__()
        self.spatial = nn.ParameterList([nn.Parameter(w.detach().clone(), requires_grad=False) for w in spatial])
        for name, t in (("w_last", w_last), ("bias", bias), ("w_next", w_next)):
            self.register_parameter(name, None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False))
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.relu, self.pool = bool(relu), bool(pool)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.ops.mtd.rank_bridge(u, list(self.spatial), self.w_last, self.bias, self.w_next, self.stride,
                                         self.padding, self.dilation, self.relu, self.pool)

    def extra_repr(self) -> str:
        shapes = [tuple(w.shape) for w in self.spatial]
        return (f"spatial={shapes}, last={None if self.w_last is None else tuple(self.w_last.shape)}, "
                f"next={None if self.w_next is None else tuple(self.w_next.shape)}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, relu={self.relu}, pool={self.pool}")


class RankSpaceRun(nn.Module):
    """A run of convs regrouped into rank space: the entry 1x1 (if any), then the bridges.

    Three ways to compute it: ``"run"``, the entry and every bridge in one ``torch.ops.mtd.rank_run`` call on
    factors packed once (``mtd_kernels.rank_run_plan``, packed again when a weight is replaced, changed in place,
    cast or moved; on the CPU without autograd the packed kernel is called directly, no dispatcher); ``"bridge"``, one
    ``rank_bridge`` call per bridge; ``"layers"``, the same run one module per layer (each conv's own fused op).
    On the CPU the first call of each input shape times them, alternating, and keeps the fastest;
    ``MTD_RANK_SPACE=run|bridge|layers`` forces one, ``auto`` (the default) measures. Traced, compiled, exported,
    training and non-CPU calls take the bridges. :meth:`path_cache` shows the choices.
    """

    def __init__(self, entry: Optional[nn.Conv2d], bridges: List[RankBridge], layers: nn.Sequential):
        super().__init__()
        self.entry = entry
        self.bridges = nn.ModuleList(bridges)
        self.layers = layers
        self._choice: Dict[tuple, str] = {}
        self._plan: Optional[tuple] = None  # see _run_plan
        self._packed = None  # mtd_kernels.rank_run_plan: the factors packed once, for the CPU calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self._path(x)
        if path == "measure":  # the first call of this shape: time every path, return the fastest one's output
            key = self._key(x)
            self._choice[key], out = self._measure(x)
            return out
        if path == "run":
            return self._run(x)
        return self.layers(x) if path == "layers" else self._bridged(x)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"] = None  # a C++ object (neither copied nor pickled): remade by the next call
        return state

    def run_arguments(self) -> Tuple[List[torch.Tensor], List[int]]:
        """(weights, meta) of the ``torch.ops.mtd.rank_run`` call that computes this run (the entry 1x1 is its
        first bridge: a dense 1x1 spatial stage)."""
        slots, meta = self._run_plan()
        return [params[name] for params, name in slots], meta

    def _run_plan(self) -> tuple:
        """(slots, meta): where each weight of the rank_run call lives (a parameter dict and its key: read per
        call, so a replaced parameter is seen) and the call's meta. Collected once (at batch 1 walking the
        modules cost more than the whole run), again when a bridge module is replaced."""
        modules = (self.entry, *self.bridges._modules.values())
        if self._plan is not None and len(self._plan[0]) == len(modules) and all(
                a is b for a, b in zip(self._plan[0], modules)):
            return self._plan[1:]
        slots, meta = [], []
        if self.entry is not None:
            slots.append((self.entry._parameters, "weight"))
            meta += bridge_meta(1, False, False, False, 1, 0, 1, False, False)
        for b in self.bridges:
            slots += [(b.spatial._parameters, key) for key in b.spatial._parameters]
            present = [b._parameters[name] is not None for name in ("w_last", "bias", "w_next")]
            slots += [(b._parameters, name) for name, there in zip(("w_last", "bias", "w_next"), present) if there]
            meta += bridge_meta(len(b.spatial), *present, b.stride, b.padding, b.dilation, b.relu, b.pool)
        self._plan = (modules, slots, meta)
        return slots, meta

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        weights, meta = self.run_arguments()
        if x.device.type != "cpu" or isinstance(x, FakeTensor) or torch.compiler.is_compiling():
            return torch.ops.mtd.rank_run(x, weights, meta, [])  # traced (MTD_RANK_SPACE=run) or not on the CPU
        plan = getattr(self, "_packed", None)  # (absent from a module unpickled from an older mtd)
        if plan is None or not plan.packed_from(weights):
            # first call, or a weight was replaced, changed in place (its version moved), cast or moved
            plan = self._packed = mtd_kernels.rank_run_plan(weights, meta)
            if plan is None:  # no compiled extension
                return torch.ops.mtd.rank_run(x, weights, meta, [])
        if torch.is_grad_enabled() or x.dtype != weights[0].dtype or torch.is_autocast_enabled("cpu"):
            return torch.ops.mtd.rank_run(x, weights, meta, plan.packed())  # through the op's autograd / autocast
        return plan(x)  # inference: the kernel on its packed factors, no dispatcher or autograd between

    def _bridged(self, x: torch.Tensor) -> torch.Tensor:
        if self.entry is not None:
            x = self.entry(x)
        for bridge in self.bridges:
            x = bridge(x)
        return x

    def path_cache(self) -> Dict[tuple, str]:
        """{(input shape, dtype, channels_last, threads): "run" | "bridge" | "layers"} as measured so far."""
        return dict(self._choice)

    def _path(self, x: torch.Tensor) -> str:
        forced = os.environ.get("MTD_RANK_SPACE", "auto").strip().lower() or "auto"
        if forced not in ("auto", "run", "bridge", "layers"):
            raise ValueError(f"MTD_RANK_SPACE={forced!r} is not one of auto, run, bridge, layers")
        if forced != "auto":
            return forced
        if (torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(x, FakeTensor)
                or x.device.type != "cpu" or torch.is_grad_enabled() and x.requires_grad):
            return "bridge"
        return self._choice.get(self._key(x), "measure")

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last), torch.get_num_threads())

    @torch.no_grad()
    def _measure(self, x: torch.Tensor, reps: int = 5) -> tuple:
        paths = {"run": self._run, "bridge": self._bridged, "layers": self.layers}
        times: Dict[str, List[float]] = {name: [] for name in paths}
        outputs = {}
        for fn in paths.values():  # warm-up: the ops' own per-shape choices, oneDNN primitives, scratch
            fn(x)
        for _ in range(reps):  # alternating, so a burst of load hits both alike
            for name, fn in paths.items():
                t0 = time.perf_counter()
                outputs[name] = fn(x)
                times[name].append(time.perf_counter() - t0)
        best = min(times, key=lambda name: statistics.median(times[name]))
        return best, outputs[best]


@dataclass
class _Unit:
    """One conv of a run and what follows it: keys[0] is the conv's slot, the rest are emptied."""

    conv: nn.Module
    relu: bool
    pool: bool
    keys: List[str]


def to_rank_space(model: nn.Module, min_convs: int = 2) -> nn.Module:
    """Regroup, in place, every run of at least ``min_convs`` eligible convs of each ``nn.Sequential``;
    returns ``model``. Outputs are unchanged up to float rounding (the bridges compute the same stages).
    A module used at more than one place in the model is never regrouped."""
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    for seq in [m for m in model.modules() if _chains_children(m)]:
        for run in _runs(seq, lambda m: _eligible(m) and uses[id(m)] == 1):
            if len(run) >= min_convs and any(isinstance(u.conv, FactorizedConv2d) for u in run):
                _regroup(seq, run)
    return model


def _chains_children(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _eligible(conv: nn.Module) -> bool:
    if isinstance(conv, FactorizedConv2d):  # backend "torch" asks for standard modules only: left alone
        return conv.backend == "fused" and conv._op_padding() is not None  # the op pads symmetrically
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _is_pool2(m: nn.Module) -> bool:
    """A 2x2 / stride 2 max-pool without padding, dilation, ceil mode or indices."""
    def two(v) -> bool:
        return v in (2, (2, 2))
    return (type(m) is nn.MaxPool2d and two(m.kernel_size) and two(m.stride) and m.padding in (0, (0, 0))
            and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices)


def _runs(seq: nn.Sequential, eligible: Callable[[nn.Module], bool]) -> List[List[_Unit]]:
    """Maximal runs of eligible convs joined only by Identity / their ReLU / one 2x2 max-pool."""
    keys = list(seq._modules)
    runs: List[List[_Unit]] = [[]]
    i = 0
    while i < len(keys):
        conv = seq._modules[keys[i]]
        if not eligible(conv):
            if type(conv) not in _EMPTY:
                runs.append([])
            i += 1
            continue
        unit = _Unit(conv, getattr(conv, "relu", False), False, [keys[i]])
        i += 1
        while i < len(keys) and type(seq._modules[keys[i]]) in (*_EMPTY, nn.ReLU, nn.MaxPool2d):
            m = seq._modules[keys[i]]
            if type(m) is nn.ReLU and not unit.relu:  # ReLU commutes with the max-pool
                unit.relu = True
            elif _is_pool2(m) and not unit.pool:
                unit.pool = True
            elif type(m) not in _EMPTY:
                break
            unit.keys.append(keys[i])
            i += 1
        runs[-1].append(unit)
        if i < len(keys) and not eligible(seq._modules[keys[i]]):
            runs.append([])
    return [r for r in runs if r]


def _regroup(seq: nn.Sequential, run: List[_Unit]) -> None:
    bridges = []
    for k, unit in enumerate(run):
        nxt = run[k + 1].conv if k + 1 < len(run) else None
        w_next = nxt.first.weight if isinstance(nxt, FactorizedConv2d) else None
        conv = unit.conv
        if isinstance(conv, FactorizedConv2d):
            spatial = [c.weight for c in conv._spatial_convs()]
            bridge = RankBridge(spatial, conv.last.weight, conv.last.bias, w_next, conv.stride, conv._op_padding(),
                                conv.dilation, unit.relu, unit.pool)
        else:
            bridge = RankBridge([conv.weight], None, conv.bias, w_next, conv.stride, conv.padding, conv.dilation,
                                unit.relu, unit.pool)
        bridges.append(bridge)
    first = run[0].conv
    entry = None
    if isinstance(first, FactorizedConv2d):
        entry = nn.Conv2d(first.in_channels, first.first.out_channels, 1, bias=False,
                          device=first.first.weight.device, dtype=first.first.weight.dtype)
        entry.weight.data.copy_(first.first.weight.detach())
        entry.weight.requires_grad_(False)
    keys = [key for unit in run for key in unit.keys]
    layers = nn.Sequential(*[seq._modules[key] for key in keys])
    seq._modules[keys[0]] = RankSpaceRun(entry, bridges, layers)
    for key in keys[1:]:
        seq._modules[key] = EmptiedSlot()
