"""A frozen teacher whose outputs are remembered per input batch, so repeated fine-tunes distil for free.

``mtd.compress`` fine-tunes several models (search probes, rounds) from the same frozen original over the
same seeded batches; on a CPU the teacher's forward pass is about as costly as the student's training step
(full-width VGG11 at 32x: 0.5 s a step alone, 1.07 s with the teacher). Keying each output by a hash of the
exact input bytes makes a repeated batch cost one hash (~1 ms for 128 CIFAR images) and can never hand back
the output of a different input.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn


class CachedTeacher(nn.Module):
    """Wraps a frozen ``teacher`` (eval mode, weights unchanged while cached); outputs kept on the CPU.

    ``max_bytes`` bounds the memory held (oldest entries are dropped first): 64 MiB hold ~13,000 batches of
    128 ten-class logits.
    """

    def __init__(self, teacher: nn.Module, max_bytes: int = 64 << 20):
        super().__init__()
        self.teacher = teacher
        self.max_bytes = int(max_bytes)
        self._outputs: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def train(self, mode: bool = True) -> "CachedTeacher":
        if mode:
            raise RuntimeError("CachedTeacher wraps a frozen teacher; it cannot be put in training mode")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = _key(x)
        out = self._outputs.get(key)
        if out is not None:
            self.hits += 1
            self._outputs.move_to_end(key)
            return out.to(x.device, non_blocking=True)
        self.misses += 1
        out = self.teacher(x)
        kept = out.detach().to("cpu", copy=True)
        self._outputs[key] = kept
        self._bytes += kept.numel() * kept.element_size()
        while self._bytes > self.max_bytes and self._outputs:
            _, old = self._outputs.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
        return out


def _key(x: torch.Tensor) -> bytes:
    """Hash of shape, dtype and the exact bytes of ``x`` (memory format ignored: values in logical order)."""
    t = x.detach().to("cpu").contiguous()
    h = hashlib.blake2b(f"{tuple(t.shape)}|{t.dtype}".encode(), digest_size=20)
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.digest()
