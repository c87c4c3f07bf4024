"""Accuracy and loss of a model over a loader (summed over ranks under DDP)."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import unwrap_model
from ..utils.precision import Precision, resolve_precision
from .distributed import all_reduce_sum


def model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Tuple[torch.Tensor, torch.Tensor]], *,
             precision: Union[str, Precision] = "fp32") -> Dict[str, float]:
    """``{'accuracy': fraction correct, 'loss': mean cross entropy, 'samples': count}``.

    The model is put in eval mode for the pass and returned to its previous mode afterwards. ``precision``
    defaults to fp32: reported accuracies are exact; "auto" / "bf16" trade that for speed (progress metrics).
    """
    net = unwrap_model(model)
    device = model_device(net)
    mode = resolve_precision(precision, device)
    was_training = net.training
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, samples
    try:
        with mode.autocast():
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                images = mode.inputs(images)
                logits = net(images).float()
                totals[0] += F.cross_entropy(logits, labels, reduction="sum")
                totals[1] += (logits.argmax(1) == labels).sum()
                totals[2] += labels.numel()
    finally:
        net.train(was_training)
    if getattr(loader, "world_size", 1) > 1:
        all_reduce_sum(totals)  # each rank evaluated its own shard
    loss_sum, correct, samples = totals.tolist()
    if samples == 0:
        raise ValueError("evaluate() got an empty loader")
    return {"accuracy": correct / samples, "loss": loss_sum / samples, "samples": int(samples)}
