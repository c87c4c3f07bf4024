"""Score a network on calibration batches, and a candidate by what it does to the whole network.

A candidate's sensitivity is the change in calibration loss and accuracy when only that one layer
is replaced (all others dense). Calibration batches come from the *training* set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import swapped
from ..utils.precision import FP32, Precision


@dataclass(frozen=True)
class Score:
    """Mean cross-entropy and top-1 accuracy (percent) on the calibration batches."""

    loss: float
    accuracy: float


class Calibration:
    """A fixed list of (images, labels) batches kept on ``device`` for repeated scoring, in ``precision``
    (scores guide choices; the verification that decides a promise runs fp32 in ``verify.py``)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], precision: Precision = FP32):
        if not batches:
            raise ValueError("calibration needs at least one batch of images")
        self.precision = precision
        self.batches = [(precision.inputs(x), y) for x, y in batches]  # converted once, scored many times
        self.num_images = sum(int(y.numel()) for _, y in batches)

    def score(self, model: nn.Module) -> Score:
        """Loss/accuracy of ``model`` (put in eval mode) on the calibration batches."""
        return score_loader(model, self.batches, self.precision)


@torch.no_grad()
def score_loader(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 precision: Precision = FP32) -> Score:
    """Mean cross-entropy and accuracy (percent) of ``model`` in eval mode over ``batches``."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        with precision.autocast():
            logits = model(precision.inputs(x)).float()
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        count += int(y.numel())
    model.train(was_training)
    if count == 0:
        raise ValueError("cannot score a model on an empty set of batches")
    return Score(total_loss / count, 100.0 * correct / count)


def sensitivity(model: nn.Module, name: str, replacement: nn.Module, calib: Calibration,
                base: Score) -> dict[str, float]:
    """Increase in loss and drop in accuracy (points) when layer ``name`` alone is ``replacement``."""
    with swapped(model, {name: replacement}):
        s = calib.score(model)
    return {"loss": s.loss - base.loss, "accuracy": base.accuracy - s.accuracy}
