"""Score a network on calibration batches, and a candidate by what it does to the whole network.

A candidate's sensitivity is the change in calibration loss and accuracy when only that one layer
is replaced (all others dense). Calibration batches come from the *training* set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import swapped
from ..train.distributed import all_reduce_sum, get_rank, get_world_size
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

    def score(self, model: nn.Module, *, local: bool = False) -> Score:
        """Loss/accuracy of ``model`` (put in eval mode) on the calibration batches. Under a process group
        every rank calls it with the same model and scores its share of the batches (``local=True``: this rank
        alone scores all of them)."""
        return score_loader(model, self.batches, self.precision, shard=not local)


@torch.no_grad()
def score_loader(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 precision: Precision = FP32, *, shard: bool = False) -> Score:
    """Mean cross-entropy and accuracy (percent) of ``model`` in eval mode over ``batches``.

    ``shard=True`` under a process group: rank r scores batches r, r + world, ... and the per-batch sums are
    gathered, then added in batch order on every rank, so every rank gets exactly the one-process figures."""
    world, rank = (get_world_size(), get_rank()) if shard else (1, 0)
    was_training = model.training
    model.eval()
    rows = torch.zeros(len(batches), 3, dtype=torch.float64)  # per batch: loss sum, correct, images
    for i in range(rank, len(batches), world):
        x, y = batches[i]
        with precision.autocast():
            logits = model(precision.inputs(x)).float()
        rows[i, 0] = float(F.cross_entropy(logits, y, reduction="sum"))
        rows[i, 1] = int((logits.argmax(1) == y).sum())
        rows[i, 2] = int(y.numel())
    model.train(was_training)
    if world > 1:
        all_reduce_sum(rows)
    total_loss, correct, count = 0.0, 0, 0
    for loss, right, n in rows.tolist():  # in batch order, as one process adds them
        total_loss, correct, count = total_loss + loss, correct + int(right), count + int(n)
    if count == 0:
        raise ValueError("cannot score a model on an empty set of batches")
    return Score(total_loss / count, 100.0 * correct / count)


def sensitivity(model: nn.Module, name: str, replacement: nn.Module, calib: Calibration,
                base: Score) -> dict[str, float]:
    """Increase in loss and drop in accuracy (points) when layer ``name`` alone is ``replacement`` (scored by
    this rank alone: under a process group the ranks score different candidates)."""
    with swapped(model, {name: replacement}):
        s = calib.score(model, local=True)
    return {"loss": s.loss - base.loss, "accuracy": base.accuracy - s.accuracy}
