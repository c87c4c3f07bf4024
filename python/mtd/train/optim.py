"""SGD with weight decay on weights only, and per-step learning-rate schedules."""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import nn

SCHEDULES = ("onecycle", "cosine", "warmup_cosine", "constant")


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float, nesterov: bool,
                   lr_scales: Optional[Mapping[int, float]] = None) -> torch.optim.SGD:
    """SGD; BatchNorm scales/shifts and biases (1-D params) get no weight decay.

    ``lr_scales`` maps ``id(parameter)`` to a multiplier of ``lr`` for that parameter (default 1).
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    lr_scales = lr_scales or {}
    groups: dict[tuple[bool, float], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim > 1, float(lr_scales.get(id(p), 1.0))), []).append(p)
    param_groups = [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
                    for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_fraction: float = 0.25) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) out of ``total_steps``.

    onecycle: linear warm-up from 1/25 over ``warmup_fraction`` then cosine to ~0; cosine: cosine
    decay from 1 to 0; warmup_cosine: linear warm-up from 0 over ``warmup_fraction`` then cosine to 0
    (fine-tuning: a freshly decomposed model's first steps are its most fragile); constant: 1.
    """
    if schedule == "constant":
        return 1.0
    progress = min(step / max(1, total_steps), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "warmup_cosine":
        if progress < warmup_fraction:
            return (step + 1) / max(1.0, warmup_fraction * total_steps)
        rest = (progress - warmup_fraction) / max(1e-12, 1.0 - warmup_fraction)
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    if schedule == "onecycle":
        if progress < warmup_fraction:
            return 0.04 + 0.96 * progress / warmup_fraction
        rest = (progress - warmup_fraction) / (1.0 - warmup_fraction)
        return 1e-4 + (1.0 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * rest))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                   warmup_fraction: float = 0.25) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR for :func:`lr_factor` (its state_dict holds only the step count)."""
    lr_factor(schedule, 0, total_steps, warmup_fraction)  # validates the name
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, total_steps, warmup_fraction))
