"""Verification of a compressed model against the original on held-out images, with a stated margin.

The drop is measured *paired* (the same images for both models): with ``d_i = base_correct_i -
compressed_correct_i`` in {-1, 0, 1}, drop = 100 * mean(d) and its standard error is 100 * std(d) / sqrt(n).
A model passes when ``drop + z * se <= max_drop``: with ``z`` the normal quantile of the configured
confidence, the true drop exceeds the budget with probability at most ``1 - confidence`` (normal
approximation). 2,000 images and 10% disagreement give se ~ 0.7 points, so the margin is not small:
more held-out images buy a smaller one. When several models are verified on the same images and the best
is kept, each is tested with the Bonferroni quantile of :func:`selection_z` so that the kept one still keeps
the promise at the stated confidence.
"""
from __future__ import annotations

import itertools
import math
from statistics import NormalDist
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..train.distributed import all_reduce_sum, get_rank, get_world_size


@dataclass(frozen=True)
class Verification:
    """The held-out check of one model (accuracies and drops in points)."""

    images: int
    base_accuracy: float
    accuracy: float
    drop: float
    se: float
    margin: float  # z * se
    max_drop: Optional[float]

    @property
    def upper(self) -> float:
        """The drop plus the margin: what must stay within ``max_drop``."""
        return self.drop + self.margin

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.upper <= self.max_drop + 1e-9

    def to_dict(self) -> dict:
        return dict(asdict(self), upper=self.upper, passed=self.passed)


@torch.no_grad()
def correct_mask(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Bool per image: is the model's top-1 prediction right (eval mode; the mode is restored).

    Under a process group every rank calls it with the same model: rank r runs batches r, r + world, ... and
    the per-image answers are gathered, so every rank holds the whole mask, image for image as one process
    would (the paired verdict is then exactly one process's)."""
    if not batches:
        raise ValueError("cannot verify a model on an empty set of images")
    world, rank = get_world_size(), get_rank()
    sizes = [int(y.numel()) for _, y in batches]
    starts = [0, *itertools.accumulate(sizes)]
    mask = torch.zeros(starts[-1], dtype=torch.int32)
    was_training = model.training
    model.eval()
    try:
        for i in range(rank, len(batches), world):
            x, y = batches[i]
            mask[starts[i]:starts[i] + sizes[i]] = (model(x).argmax(1) == y).to("cpu", torch.int32)
    finally:
        model.train(was_training)
    if world > 1:
        all_reduce_sum(mask)
    return mask.bool()


def verify(model: nn.Module, batches: list, base_correct: torch.Tensor, max_drop: Optional[float],
           z: float) -> Verification:
    """Paired drop of ``model`` against the original's ``base_correct`` on the same ``batches``."""
    return paired_verification(base_correct, correct_mask(model, batches), max_drop, z)


def paired_verification(base_correct: torch.Tensor, correct: torch.Tensor, max_drop: Optional[float],
                        z: float) -> Verification:
    """The paired drop of ``correct`` against ``base_correct`` (bool per image, the same images)."""
    if correct.shape != base_correct.shape:
        raise ValueError(f"verification saw {correct.numel()} images, the original {base_correct.numel()}")
    n = correct.numel()
    d = base_correct.double() - correct.double()
    se = 100.0 * float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("inf")
    return Verification(images=n, base_accuracy=100.0 * float(base_correct.double().mean()),
                        accuracy=100.0 * float(correct.double().mean()), drop=100.0 * float(d.mean()), se=se,
                        margin=z * se, max_drop=max_drop)


def selection_z(confidence: float, tests: int) -> float:
    """The margin's quantile when up to ``tests`` models are verified on the same images and one is kept.

    Each verification at confidence ``c`` lets a model whose true drop exceeds the budget pass with
    probability up to ``1 - c``; keeping the most compressed of several passing models multiplies that chance
    (three rounds at 0.8: up to ~49% in the worst case). Testing each at ``1 - (1 - c) / tests``
    (Bonferroni) keeps the chance that *any* over-budget model passes, and so that the kept one is over
    budget, within ``1 - c``; ``benchmarks/studies/promise_simulation.py`` measures what this delivers.
    """
    if tests < 1:
        raise ValueError(f"tests must be >= 1, got {tests}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / tests)
