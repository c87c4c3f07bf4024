"""Fine-tuning a (compressed) model, optionally distilling from the original as teacher."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .loop import History, Loader, train


def finetune(model: nn.Module, train_loader: Loader, *, epochs: int, lr: float = 0.01,
             teacher: Optional[nn.Module] = None, kd_alpha: float = 0.9, kd_temperature: float = 4.0,
             schedule: str = "cosine", label_smoothing: float = 0.0, **kwargs: Any) -> History:
    """:func:`train` with fine-tuning defaults (smaller lr, cosine decay, no warm-up).

    With ``teacher`` the loss is ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL`` (see
    :func:`mtd.train.losses.distillation_loss`); other keyword arguments go to :func:`train`.
    """
    return train(model, train_loader, epochs=epochs, lr=lr, teacher=teacher, kd_alpha=kd_alpha,
                 kd_temperature=kd_temperature, schedule=schedule, label_smoothing=label_smoothing, **kwargs)
