"""Candidate decompositions per layer: which (method, ranks) pairs the planner tries.

Ranks are derived from target per-layer compression ratios, so the grid means the same thing for a
16-channel and a 512-channel layer. Candidates that would not save parameters are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .. import methods


@dataclass(frozen=True)
class Candidate:
    """One way to implement a layer: ``method`` in dense/cp/cp4/tucker/svd with its ranks."""

    method: str
    ranks: tuple[int, ...] = ()

    def label(self) -> str:
        return self.method if not self.ranks else f"{self.method}{list(self.ranks)}"


DENSE = Candidate(methods.DENSE)


@dataclass
class CandidateGrid:
    """Per-layer compression ratios tried for each method (ratio = dense params / layer params).

    ``methods``: the conv decompositions tried (Linear layers always try SVD); each method's values are the field
    its :class:`mtd.methods.Method` names (``grid_field``).
    """

    cp_ratios: tuple[float, ...] = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
    cp4_ratios: tuple[float, ...] = (4, 8, 16, 32)
    tucker_fractions: tuple[float, ...] = (0.5, 0.375, 0.25, 0.1875, 0.125, 0.0625)  # R1/S and R2/T
    svd_ratios: tuple[float, ...] = (2, 4, 8, 16)
    methods: tuple[str, ...] = field(default=("cp", "cp4", "tucker"))

    @classmethod
    def small(cls) -> "CandidateGrid":
        """A coarser grid for quick runs (CLI default, tests)."""
        return cls(cp_ratios=(4, 8, 16, 32), cp4_ratios=(8,), tucker_fractions=(0.5, 0.25, 0.125),
                   svd_ratios=(2, 4))

    @classmethod
    def coarse(cls) -> "CandidateGrid":
        """High-compression candidates for full-width models (256-512 channels).

        A whole-model ratio of 32x needs the 512-channel convs (~80% of a CIFAR VGG's parameters) well beyond
        32x each, so that small, sensitive layers can stay dense or lightly compressed: CP to 128x, Tucker-2
        down to 1/32 of the channels. Few points, because each candidate costs a full forward pass to score.
        """
        return cls(cp_ratios=(8, 16, 32, 64, 128), cp4_ratios=(),
                   tucker_fractions=(0.25, 0.125, 0.0625, 0.03125), svd_ratios=(2, 4), methods=("cp", "tucker"))

    @classmethod
    def tiny(cls) -> "CandidateGrid":
        """A handful of candidates per layer (smoke runs)."""
        return cls(cp_ratios=(4, 16), cp4_ratios=(), tucker_fractions=(0.5, 0.25), svd_ratios=(2,),
                   methods=("cp", "tucker"))

    @classmethod
    def named(cls, name: str) -> "CandidateGrid":
        """``full``, ``small``, ``coarse`` or ``tiny``."""
        grids = {"full": cls, "small": cls.small, "coarse": cls.coarse, "tiny": cls.tiny}
        if name not in grids:
            raise ValueError(f"unknown candidate grid {name!r}; choose one of {', '.join(grids)}")
        return grids[name]()


def _methods_tried(module: nn.Module, grid: CandidateGrid) -> list[methods.Method]:
    """The table's methods for ``module``'s type; ``grid.methods`` picks among those of convs (a Linear always tries
    its one, SVD)."""
    return [m for m in methods.for_module(module) if m.kind is not nn.Conv2d or m.name in grid.methods]


def layer_candidates(module: nn.Module, grid: CandidateGrid) -> list[Candidate]:
    """All candidates for ``module`` (dense not included), per method (table order) from least to most
    compressed; ranks come from the method's grid values, and candidates that save no parameters are dropped."""
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"unsupported layer type {type(module).__name__}; mtd compresses Conv2d and Linear")
    shape = tuple(module.weight.shape)
    out: list[Candidate] = []
    for method in _methods_tried(module, grid):
        if method.worth_trying(shape):
            ranks = method.grid_ranks(shape, getattr(grid, method.grid_field))
            out += [Candidate(method.name, r) for r in ranks if method.saves_parameters(shape, r)]
    return out
