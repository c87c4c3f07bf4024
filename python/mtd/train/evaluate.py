"""Accuracy and loss of a model over a loader (summed over ranks under DDP)."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import unwrap_model
from .distributed import all_reduce_sum


def autocast_context(device: torch.device, amp: Optional[bool]):
    """bf16 autocast: on by default on CUDA, off by default on CPU."""
    enabled = device.type == "cuda" if amp is None else bool(amp)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Tuple[torch.Tensor, torch.Tensor]], *,
             amp: Optional[bool] = None, channels_last: bool = False) -> Dict[str, float]:
    """``{'accuracy': fraction correct, 'loss': mean cross entropy, 'samples': count}``.

    The model is put in eval mode for the pass and returned to its previous mode afterwards.
    """
    net = unwrap_model(model)
    device = model_device(net)
    was_training = net.training
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, samples
    try:
        with autocast_context(device, amp):
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
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
