"""Classification and knowledge-distillation losses."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor,
                      teacher_logits: Optional[torch.Tensor] = None, *, alpha: float = 0.9,
                      temperature: float = 4.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - alpha) * CE(student, targets) + alpha * T^2 * KL(teacher_T || student_T)`` (Hinton et al.).

    Without a teacher this is plain (label-smoothed) cross entropy. Computed in float32.
    """
    student_logits = student_logits.float()
    hard = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return hard
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ValueError(f"kd_temperature must be > 0, got {temperature}")
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2
    return (1.0 - alpha) * hard + alpha * soft
