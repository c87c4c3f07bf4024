"""The method table: one entry per decomposition method, the only place that maps a method name to its code.

Each :class:`Method` says which layers it decomposes, how (decompose function, factor type, layer class),
what the result costs (parameters, MACs), which ranks are valid, how the candidate grid turns ratios into
ranks, and whether lower ranks warm-start from higher ones. The planner, the factor cache, the layer factory
and :func:`check_compressible` (a layer checked for one method) look methods up here, so a new method (or an
activation-aware variant, ``aware=``) is one entry, not a change in each of them. The table imports the layer
classes; :mod:`mtd.layers` never imports the table. ``"dense"`` (keep the layer) is no method.

Shapes are weight shapes: (T, S, kh, kw) for a conv, (out, in) for a Linear; ranks are tuples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from torch import nn

from . import decompose
from .decompose import costs
from .layers import CP4Conv2d, CPConv2d, LowRankLinear, TuckerConv2d
from .layers._factorized import FactorizedModule
from .layers.compressible import raise_unsupported
from .layers.compressible import unsupported_reason as layer_reason

Shape = tuple[int, ...]
Ranks = tuple[int, ...]
DENSE = "dense"  # the planner's name for "keep the layer"


@dataclass(frozen=True)
class DecompositionSettings:
    """ALS settings that change the CP result (recorded in the plan)."""

    cp_n_iter_max: int = 100
    cp_tol: float = 1e-6
    engine: str = "mtd"  # mtd.decompose engine ("mtd" or "tensorly")


@dataclass(frozen=True)
class Method:
    """One decomposition method.

    ``decompose(weight, ranks, *, seed, init, settings) -> factors``: ``init`` is ``"svd"`` or, for a method that
    ``warm_starts``, the factors of a higher rank. ``aware(weight, ranks, stats, *, start) -> factors``: the
    activation-aware variant (``mtd.recovery.aware``), refining ``start`` (the weight-only factors) so that
    the layer's output on the inputs summarised by ``stats`` (an ``InputStats``) is closest; None where it
    does not win. ``grid_ranks(shape, values)``: candidate ranks from the values of the
    :class:`~mtd.planner.CandidateGrid` field ``grid_field`` (ratios or channel fractions), least compressed first.
    ``worth_trying(shape)``: whether the candidate grid tries it on a kernel of this shape.
    """

    name: str
    kind: type  # the dense layer type it decomposes: nn.Conv2d or nn.Linear
    layer: type  # the decomposed layer class
    factors: type  # what ``decompose`` returns
    decompose: Callable[..., Any]
    params: Callable[[Shape, Ranks], int]  # weights of the factors (the bias is the dense layer's)
    macs: Callable[[Shape, Ranks, Sequence[int], Sequence[int]], int]  # (shape, ranks, in_hw, out_hw)
    check_ranks: Callable[[Any, Shape], Ranks]  # normalised ranks, or ValueError/TypeError saying what is allowed
    grid_field: str
    grid_ranks: Callable[[Shape, Sequence[float]], list[Ranks]]
    warm_starts: bool = False
    worth_trying: Callable[[Shape], bool] = lambda shape: True
    aware: Optional[Callable[..., Any]] = None

    def applies_to(self, module: nn.Module) -> bool:
        return isinstance(module, self.kind)

    def saves_parameters(self, shape: Shape, ranks: Ranks) -> bool:
        """True if the factors hold fewer weights than the dense kernel."""
        return self.params(shape, ranks) < math.prod(shape)

    def empty_layer(self, module: nn.Module, ranks: Sequence[int], backend: str = "torch") -> nn.Module:
        """The decomposed layer shaped like ``module`` at ``ranks`` (weights unset)."""
        rank = _layer_rank(self.check_ranks(ranks, tuple(module.weight.shape)))
        kw = dict(bias=module.bias is not None, backend=backend, device=module.weight.device,
                  dtype=module.weight.dtype)
        if self.kind is nn.Linear:
            return self.layer(module.in_features, module.out_features, rank, **kw)
        return self.layer(module.in_channels, module.out_channels, module.kernel_size, rank, stride=module.stride,
                          padding=module.padding, dilation=module.dilation, **kw)

    def build_layer(self, module: nn.Module, factors: Any, backend: str = "torch") -> nn.Module:
        """The decomposed replacement of ``module`` holding ``factors`` (and ``module``'s bias)."""
        rank = _layer_rank(factors.ranks)
        if self.kind is nn.Linear:
            return self.layer.from_linear(module, rank, backend=backend, factors=factors)
        return self.layer.from_conv(module, rank, backend=backend, factors=factors)


def _layer_rank(ranks: Ranks) -> Any:
    """The layer constructors take one rank as an int and two as a tuple."""
    return ranks[0] if len(ranks) == 1 else tuple(ranks)


def rank_for_ratio(params: Callable[[Shape, Ranks], int], shape: Shape, ratio: float) -> int:
    """Largest rank whose ``params`` (linear in the rank) are at most ``dense / ratio``, at least 1."""
    if not ratio or ratio <= 1:
        raise ValueError(f"a compression ratio must be > 1 (such as 4), got {ratio!r}")
    return max(1, int(math.prod(shape) / ratio // params(shape, (1,))))


def _ratio_ranks(params: Callable[[Shape, Ranks], int]) -> Callable[[Shape, Sequence[float]], list[Ranks]]:
    """``grid_ranks`` of a one-rank method: the rank of each compression ratio, highest first."""
    return lambda shape, ratios: [(r,) for r in sorted({rank_for_ratio(params, shape, q) for q in ratios},
                                                        reverse=True)]


def _tucker_fraction_ranks(shape: Shape, fractions: Sequence[float]) -> list[Ranks]:
    """(R1, R2) = (a*S, b*T) for every pair of fractions, highest first."""
    t, s = shape[:2]
    return sorted({(max(1, round(a * s)), max(1, round(b * t))) for a in fractions for b in fractions}, reverse=True)


# -- decompose functions: (weight, ranks, *, seed, init, settings) -> factors ------------------------------------
def _cp3(weight, ranks, *, seed: int, init: Any, settings: DecompositionSettings):
    return decompose.cp_decompose_conv(weight, ranks[0], init=init, seed=seed, n_iter_max=settings.cp_n_iter_max,
                                       tol=settings.cp_tol, engine=settings.engine)


def _cp4(weight, ranks, *, seed: int, init: Any, settings: DecompositionSettings):
    return decompose.cp4_decompose_conv(weight, ranks[0], init=init, seed=seed, n_iter_max=settings.cp_n_iter_max,
                                        tol=settings.cp_tol, engine=settings.engine)


def _tucker2(weight, ranks, *, seed: int, init: Any, settings: DecompositionSettings):
    return decompose.tucker2_decompose_conv(weight, ranks=tuple(ranks), seed=seed, engine=settings.engine)


def _svd(weight, ranks, *, seed: int, init: Any, settings: DecompositionSettings):
    return decompose.svd_decompose(weight, ranks[0])


# -- activation-aware variants: (weight, ranks, stats, *, start) -> factors ---------------------------------------
# Kept where they won on held-out data (benchmarks/results/bench_aware.md, full-width VGG11): CP3 output error
# 0.63x of the weight-only twin's (median of 16 layer/rank rows), Tucker-2 0.57x, single-layer test accuracy up
# to +15 / +22 points. The classifier's SVD did not (0.643 -> 0.645 on held-out images: 1,024 samples are too
# few for a 512-wide input), so ``svd`` has none.
def _aware_cp3(weight, ranks, stats, *, start):
    from .recovery.aware import aware_cp

    return aware_cp(weight, stats, ranks[0], start=start)


def _aware_cp4(weight, ranks, stats, *, start):
    from .recovery.aware import aware_cp4

    return aware_cp4(weight, stats, ranks[0], start=start)


def _aware_tucker2(weight, ranks, stats, *, start):
    from .recovery.aware import aware_tucker2

    return aware_tucker2(weight, stats, tuple(ranks), start=start)


# -- rank checks: (ranks, shape) -> ranks ---------------------------------------------------------------------
def _one_rank(name: str, check: Callable[[Any, Shape], int]) -> Callable[[Any, Shape], Ranks]:
    def check_ranks(ranks: Any, shape: Shape) -> Ranks:
        ranks = tuple(ranks) if isinstance(ranks, (tuple, list)) else (ranks,)
        if len(ranks) != 1:
            raise ValueError(f"method {name!r} takes one rank, got {ranks!r}")
        return (check(ranks[0], shape),)

    return check_ranks


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("cp", nn.Conv2d, CPConv2d, decompose.CPFactors, _cp3, costs.cp3_params, costs.cp3_macs,
           _one_rank("cp", lambda r, shape: decompose.check_cp_rank(r, shape, "cp3")),
           "cp_ratios", _ratio_ranks(costs.cp3_params), warm_starts=True, aware=_aware_cp3),
    # CP4 splits the kernel into kh x 1 and 1 x kw; on a kernel one pixel wide it is CP3 with an extra conv
    Method("cp4", nn.Conv2d, CP4Conv2d, decompose.CP4Factors, _cp4, costs.cp4_params, costs.cp4_macs,
           _one_rank("cp4", lambda r, shape: decompose.check_cp_rank(r, shape, "cp4")),
           "cp4_ratios", _ratio_ranks(costs.cp4_params), warm_starts=True,
           worth_trying=lambda shape: shape[2] > 1 and shape[3] > 1, aware=_aware_cp4),
    Method("tucker", nn.Conv2d, TuckerConv2d, decompose.TuckerFactors, _tucker2, costs.tucker2_params,
           costs.tucker2_macs, decompose.check_tucker_ranks,
           "tucker_fractions", _tucker_fraction_ranks, aware=_aware_tucker2),
    Method("svd", nn.Linear, LowRankLinear, decompose.SVDFactors, _svd, costs.svd_params, costs.svd_macs,
           _one_rank("svd", lambda r, shape: decompose.check_svd_rank(r, *shape)),
           "svd_ratios", _ratio_ranks(costs.svd_params)),
)}


def get(name: str) -> Method:
    """The entry of ``name``; ValueError naming the methods there are."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown decomposition method {name!r}; allowed: {', '.join(METHODS)}") from None


def names() -> tuple[str, ...]:
    """All method names, in table order."""
    return tuple(METHODS)


def for_module(module: nn.Module) -> list[Method]:
    """The methods that decompose ``module``'s type (table order)."""
    return [m for m in METHODS.values() if m.applies_to(module)]


def unsupported_reason(module: nn.Module, method: str) -> Optional[str]:
    """Why ``method`` cannot decompose ``module``, or ``None`` if it can."""
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, FactorizedModule):
        if method not in METHODS:
            return f"unknown method {method!r}; allowed: {', '.join(names())}"
        needs = METHODS[method].kind
        if not isinstance(module, needs):
            return f"method {method!r} needs an nn.{needs.__name__}, and it is an nn.{type(module).__name__}"
    return layer_reason(module)


def check_compressible(module: nn.Module, method: str, name: Optional[str] = None) -> None:
    """Raise :class:`mtd.layers.UnsupportedLayerError` (a ValueError) unless ``method`` can decompose ``module``."""
    raise_unsupported(unsupported_reason(module, method), module, method, name)
