"""Candidate decompositions per layer: which (method, ranks) pairs the planner tries.

Ranks are derived from target per-layer compression ratios, so the grid means the same thing for a
16-channel and a 512-channel layer. Candidates that would not save parameters are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from torch import nn

from .baselines import uniform_cp_rank, uniform_svd_rank


@dataclass(frozen=True)
class Candidate:
    """One way to implement a layer: ``method`` in dense/cp/cp4/tucker/svd with its ranks."""

    method: str
    ranks: tuple[int, ...] = ()

    def label(self) -> str:
        return self.method if not self.ranks else f"{self.method}{list(self.ranks)}"


DENSE = Candidate("dense")


@dataclass
class CandidateGrid:
    """Per-layer compression ratios tried for each method (ratio = dense params / layer params)."""

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


def conv_shape(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(T, S, kh, kw) of a conv's kernel."""
    T, S, kh, kw = conv.weight.shape
    return int(T), int(S), int(kh), int(kw)


def conv_candidates(conv: nn.Conv2d, grid: CandidateGrid) -> list[Candidate]:
    """CP3 / CP4 / Tucker-2 candidates for one conv, ordered from least to most compressed per method."""
    T, S, kh, kw = conv_shape(conv)
    dense = T * S * kh * kw
    out: list[Candidate] = []
    if "cp" in grid.methods:
        ranks = sorted({uniform_cp_rank(T, S, kh, kw, r) for r in grid.cp_ratios}, reverse=True)
        out += [Candidate("cp", (r,)) for r in ranks if r * (S + T + kh * kw) < dense]
    if "cp4" in grid.methods and kh > 1 and kw > 1:
        ranks = sorted({uniform_cp_rank(T, S, kh, kw, r, cp4=True) for r in grid.cp4_ratios}, reverse=True)
        out += [Candidate("cp4", (r,)) for r in ranks if r * (S + T + kh + kw) < dense]
    if "tucker" in grid.methods:
        pairs = sorted({(max(1, round(a * S)), max(1, round(b * T)))
                        for a in grid.tucker_fractions for b in grid.tucker_fractions}, reverse=True)
        out += [Candidate("tucker", p) for p in pairs if S * p[0] + p[0] * p[1] * kh * kw + p[1] * T < dense]
    return out


def linear_candidates(linear: nn.Linear, grid: CandidateGrid) -> list[Candidate]:
    """SVD candidates for one Linear layer (most accurate first)."""
    n_out, n_in = linear.weight.shape
    ranks = sorted({uniform_svd_rank(n_out, n_in, r) for r in grid.svd_ratios}, reverse=True)
    return [Candidate("svd", (r,)) for r in ranks if r * (n_in + n_out) < n_out * n_in]


def layer_candidates(module: nn.Module, grid: CandidateGrid) -> list[Candidate]:
    """All candidates for ``module`` (dense not included)."""
    if isinstance(module, nn.Conv2d):
        return conv_candidates(module, grid)
    if isinstance(module, nn.Linear):
        return linear_candidates(module, grid)
    raise TypeError(f"unsupported layer type {type(module).__name__}; mtd compresses Conv2d and Linear")
