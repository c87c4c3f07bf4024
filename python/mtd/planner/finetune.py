"""Fine-tuning step of the planner (delegates to :func:`mtd.train.finetune`)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def finetune_model(model: nn.Module, loader: Any, *, epochs: int, lr: float, teacher: Optional[nn.Module],
                   device: torch.device, progress: bool, seed: int = 0,
                   channels_last: bool = False) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place (distilling from ``teacher`` when given); returns the per-epoch history."""
    from ..train import finetune

    model.to(device)
    return finetune(model, loader, epochs=epochs, lr=lr, teacher=teacher, progress=progress, seed=seed,
                    channels_last=channels_last)
