"""Training, evaluation, distillation fine-tuning and DDP helpers."""
from . import distributed
from .evaluate import evaluate
from .finetune import finetune
from .losses import distillation_loss
from .loop import train
from .optim import SCHEDULES, lr_factor

__all__ = ["train", "evaluate", "finetune", "distillation_loss", "distributed", "SCHEDULES", "lr_factor"]
