"""Choose one candidate per layer: maximise compression under an accuracy budget or a ratio target.

Each layer's candidates carry a measured, layer-alone loss increase. For a trade-off weight ``lam``
every layer independently minimises ``params / total_params + lam * max(dloss, 0)`` (a Lagrangian
relaxation of the knapsack "fewest parameters with total loss increase <= budget", which treats the
loss increases as additive). Sweeping ``lam`` gives a path of assignments from most compressed to
all-dense, which ``search.py`` walks with fine-tuned measurements.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .candidates import Candidate


@dataclass
class Scored:
    """A candidate with its cost and measured effect (``loss``/``accuracy`` are increases/drops)."""

    candidate: Candidate
    params: int
    macs: int  # multiply-accumulates for one sample
    rel_error: float = 0.0
    loss: float = 0.0
    accuracy: float = 0.0

    @property
    def method(self) -> str:
        return self.candidate.method


Assignment = dict[str, Scored]


def select_for_weight(options: dict[str, list[Scored]], lam: float, total_params: int) -> Assignment:
    """Per layer, the candidate minimising ``params / total_params + lam * max(loss, 0)``."""
    chosen: Assignment = {}
    for name, opts in options.items():
        chosen[name] = min(opts, key=lambda s: (s.params / total_params + lam * max(s.loss, 0.0), s.params))
    return chosen


def assignment_path(options: dict[str, list[Scored]], total_params: int) -> list[Assignment]:
    """Distinct assignments along the trade-off weight, most compressed first."""
    path: list[Assignment] = []
    seen: set = set()
    for lam in [0.0, *np.geomspace(1e-4, 1e6, 121)]:
        a = select_for_weight(options, float(lam), total_params)
        key = tuple((n, a[n].candidate) for n in sorted(a))
        if key not in seen:
            seen.add(key)
            path.append(a)
    return path


def search_ratio(path: list[Assignment], ratio_of: Callable[[Assignment], float],
                 target_ratio: float) -> tuple[Optional[int], Assignment]:
    """Least compressed (most accurate) assignment whose ratio is >= ``target_ratio``.

    Returns ``(None, most compressed)`` when even the most compressed assignment misses the target.
    """
    for i in range(len(path) - 1, -1, -1):
        if ratio_of(path[i]) >= target_ratio:
            return i, path[i]
    return None, path[0]
