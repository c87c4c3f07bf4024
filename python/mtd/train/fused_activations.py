"""BatchNorm -> ReLU [-> 2x2 max-pool] as one op while a model trains on the CPU (``torch.ops.mtd.bn_relu``).

In the bf16 + channels_last training step of a 39x VGG16, PyTorch's separate BatchNorm, ReLU and max-pool ops
(forward and backward) took 42% of the time: memory-bound passes over the full-width maps, about ten a step. The
fused op makes four and saves only its input for backward (``csrc/cpu/bn_relu.cpp``).

:func:`fused_bn_relu` rewrites, for the duration of a ``with`` block, every ``BatchNorm2d, ReLU[, MaxPool2d(2)]``
run among the direct children of an ``nn.Sequential`` (the same rule as :func:`mtd.prepare_inference`): the
BatchNorm becomes a :class:`BatchNormReLU2d` holding the *same* parameter and buffer tensors (an optimizer, DDP and
``state_dict`` keys see no change), the ReLU and pool slots become identities. On exit the original modules are
put back. Outside training mode, or on inputs the kernel does not take (not CPU, not channels_last, another dtype),
the rewritten module runs exactly what the three modules ran. Modules used twice, or with hooks of their own, are
left alone.

Opt-in (``MTD_FUSED_TRAINING=1``): the fused op computes in fp32 on a bf16 map's values where PyTorch rounds the
BatchNorm output first, a difference within noise for one fine-tune (paired: +0.10 and -0.20 points) but not for
the README's main job, whose quick baseline, probes and rounds all train: on 3 seeds it returned 9.27x, 5.96x and
4.39x within budget against 11.00x, 9.48x and 9.10x without it (benchmarks/results/quick_job_fused.md). Until more
seeds say whether that is chance, training runs the plain modules by default.
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.inference import _chains_children
from ..layers.rank_space import _is_pool2


class BatchNormReLU2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` followed by ReLU (and, with ``pool``, a 2x2 / stride 2 max-pool), fused in training mode
    on channels_last CPU maps; create it with :meth:`sharing` so that it uses an existing BatchNorm's tensors."""

    pool: bool

    @classmethod
    def sharing(cls, bn: nn.BatchNorm2d, pool: bool) -> "BatchNormReLU2d":
        """A module over ``bn``'s own parameter and buffer tensors (no copy: updates reach ``bn``)."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for key in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training"):
            setattr(fused, key, getattr(bn, key))
        fused._parameters = dict(bn._parameters)
        fused._buffers = dict(bn._buffers)
        fused.pool = pool
        return fused

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu=True, pool={self.pool}"

    def _fusable(self, x: torch.Tensor) -> bool:
        if not (self.training and self.affine and x.device.type == "cpu" and x.dim() == 4
                and x.dtype in (torch.float32, torch.bfloat16)):
            return False
        n, _, h, w = x.shape
        if n * h * w <= 1 or (self.pool and (h < 2 or w < 2)):
            return False  # the plain path raises what PyTorch raises
        return x.is_contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fusable(x):
            y = F.relu(super().forward(x))
            return F.max_pool2d(y, 2) if self.pool else y
        y, mean, var = torch.ops.mtd.bn_relu(x, self.weight, self.bias, self.eps, self.pool)
        if self.track_running_stats:
            self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """What ``nn.BatchNorm2d`` does in training: momentum (or, with ``momentum=None``, the cumulative average)
        towards the batch mean and the unbiased batch variance."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_((var * (count / max(count - 1, 1))).to(self.running_var.dtype), factor)


def _runs(model: nn.Module) -> List[Tuple[nn.Sequential, List[str], bool]]:
    """(Sequential, [bn key, relu key(, pool key)], pool) of every fusable run, each module used once."""
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    found = []
    for seq in model.modules():
        if not _chains_children(seq):
            continue
        keys = list(seq._modules)
        for i in range(len(keys) - 1):
            bn, relu = seq._modules[keys[i]], seq._modules[keys[i + 1]]
            if type(bn) is not nn.BatchNorm2d or type(relu) is not nn.ReLU or not bn.affine:
                continue
            if uses[id(bn)] > 1 or uses[id(relu)] > 1 or _hooked(bn) or _hooked(relu):
                continue
            pool = seq._modules[keys[i + 2]] if i + 2 < len(keys) else None
            with_pool = pool is not None and _is_pool2(pool) and uses[id(pool)] == 1 and not _hooked(pool)
            found.append((seq, keys[i:i + (3 if with_pool else 2)], with_pool))
    return found


def _hooked(module: nn.Module) -> bool:
    """A module with hooks of its own: rewritten, they would silently stop firing."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or getattr(module, "parametrizations", None))


def enabled() -> bool:
    """Whether :func:`fused_bn_relu` rewrites anything: ``MTD_FUSED_TRAINING=1`` (off by default, see the module
    docstring) and the compiled CPU kernel is loaded."""
    import mtd_kernels

    return os.environ.get("MTD_FUSED_TRAINING", "0").strip() == "1" and mtd_kernels.extension_available()


@contextlib.contextmanager
def fused_bn_relu(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s ``BatchNorm2d, ReLU[, MaxPool2d(2)]`` runs train as one op where
    :func:`enabled` (see the module docstring); yields how many runs were rewritten (0 when not enabled)."""
    runs = _runs(model) if enabled() else []
    originals = []
    try:
        for seq, keys, pool in runs:
            bn = seq._modules[keys[0]]
            originals.append((seq, keys, [seq._modules[k] for k in keys]))
            seq._modules[keys[0]] = BatchNormReLU2d.sharing(bn, pool)
            for k in keys[1:]:
                seq._modules[k] = nn.Identity()
        yield len(runs)
    finally:
        for seq, keys, modules in originals:
            fused = seq._modules[keys[0]]
            bn = modules[0]
            bn._parameters.update(fused._parameters)  # a tensor reassigned meanwhile (e.g. by .to()) carries over
            bn._buffers.update(fused._buffers)
            for k, m in zip(keys, modules):
                m.train(fused.training)
                seq._modules[k] = m
