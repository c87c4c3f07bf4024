"""Second moments of the inputs of a network's compressible layers, from one pass of calibration data.

What an activation-aware decomposition needs (``aware.py``): for a layer ``y = W x`` the output error of
an approximation ``W_hat`` on the data is ``E ||(W - W_hat) x||^2 = tr((W - W_hat) Sigma (W - W_hat)^T)``
with ``Sigma = E[x x^T]`` the *uncentered* second moment of the layer's input vectors ``x``: for a conv
the unfolded patches (S*kh*kw values, with the conv's own stride / padding / dilation, so padded zeros
count as they do in the conv), for a Linear its input rows.

Per layer, accumulated in float64 (streaming; sums are divided by the count at the end):

* ``channel_moment`` (S, S): ``E[u u^T]`` over every input pixel ``u`` (all N*H*W positions; padding
  not counted), with ``mean`` (S,) and ``count`` (pixels).  Always collected: 8*S^2 bytes (2 MB at S=512).
* ``patch_moment`` (D, D), D = S*kh*kw, index ``s*kh*kw + i*kw + j`` (the order of ``F.unfold`` and of
  ``weight.reshape(T, D)``), with ``patch_count`` (output positions).  Collected when D <= ``patch_limit``
  (default 4608 = 512*3*3): 8*D^2 bytes per layer, e.g. 170 MB at D = 4608, 42 MB at 2304, 2.7 MB at 576;
  the unfolded patches are processed in chunks of at most ``chunk_bytes`` (float64), so the transient
  memory stays bounded too.  For a Linear the patch moment *is* the channel moment (same tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import compressible_layers
from ..layers._geometry import same_padding
from ..train.distributed import all_reduce_sum, get_rank, get_world_size
from ..utils import progress_bar

DEFAULT_PATCH_LIMIT = 4608  # 512 * 3 * 3: the largest VGG / ResNet 3x3 conv; 170 MB per layer
DEFAULT_CHUNK_BYTES = 64 << 20  # float64 unfolded patches processed at a time

Batch = Union[torch.Tensor, Tuple[torch.Tensor, ...], list]


@dataclass
class InputStats:
    """Input statistics of one Conv2d / Linear (all float64 on the CPU; see the module docstring)."""

    channel_moment: torch.Tensor  # (S, S) E[u u^T] over input pixels (rows for a Linear)
    mean: torch.Tensor  # (S,) E[u]
    count: int  # pixels (or rows) averaged
    kernel_size: Tuple[int, int]  # (1, 1) for a Linear
    patch_moment: Optional[torch.Tensor] = None  # (S*kh*kw, S*kh*kw) E[x x^T] over patches, or None
    patch_count: int = 0  # patches (output positions) averaged

    @property
    def in_channels(self) -> int:
        return int(self.channel_moment.shape[0])


class _Accumulator:
    """Running float64 sums for one layer; ``stats()`` divides by the counts."""

    def __init__(self, module: nn.Module, patch_limit: int, chunk_bytes: int):
        self.module = module
        self.is_conv = isinstance(module, nn.Conv2d)
        s = module.in_channels if self.is_conv else module.in_features
        self.kernel = tuple(module.kernel_size) if self.is_conv else (1, 1)
        self.dim = s * self.kernel[0] * self.kernel[1]
        self.with_patches = self.is_conv and self.dim <= patch_limit
        self.chunk_bytes = chunk_bytes
        self.moment = self.sum = self.patch_moment = None
        self.count = self.patch_count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        rows = x.movedim(1, -1).reshape(-1, x.shape[1]) if self.is_conv else x.reshape(-1, x.shape[-1])
        self._add_rows(rows)  # (N*H*W, S) pixels or (N, in) rows
        if self.with_patches:
            self._add_patches(x)

    def _add_rows(self, rows: torch.Tensor) -> None:
        step = max(1, self.chunk_bytes // (8 * rows.shape[1]))
        for start in range(0, rows.shape[0], step):
            chunk = rows[start:start + step].to(torch.float64)
            gram, total = chunk.T @ chunk, chunk.sum(0)
            self.moment = gram if self.moment is None else self.moment + gram
            self.sum = total if self.sum is None else self.sum + total
        self.count += rows.shape[0]

    def _add_patches(self, x: torch.Tensor) -> None:
        conv = self.module
        padding = conv.padding
        if isinstance(padding, str):  # 'valid' or 'same' (stride 1): pad explicitly like nn.Conv2d
            if padding == "same":
                top, bottom, left, right = same_padding(self.kernel, conv.dilation)
                x = F.pad(x, (left, right, top, bottom))
            padding = 0
        per_image = self.dim * 8 * _output_positions(x.shape[2:], conv, padding)
        step = max(1, self.chunk_bytes // max(per_image, 1))
        for start in range(0, x.shape[0], step):
            cols = F.unfold(x[start:start + step].to(torch.float64), conv.kernel_size, dilation=conv.dilation,
                            padding=padding, stride=conv.stride)  # (n, D, L)
            patches = cols.transpose(1, 2).reshape(-1, self.dim)  # (n*L, D)
            gram = patches.T @ patches
            self.patch_moment = gram if self.patch_moment is None else self.patch_moment + gram
            self.patch_count += patches.shape[0]

    def reduce(self) -> None:
        """Sum the accumulators over the ranks of a process group (collective; a rank that saw no inputs adds
        zeros)."""
        s = self.dim // (self.kernel[0] * self.kernel[1])
        device = self.module.weight.device
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.moment = all_reduce_sum(self.moment if self.moment is not None else zeros(s, s))
        self.sum = all_reduce_sum(self.sum if self.sum is not None else zeros(s))
        if self.with_patches:
            self.patch_moment = all_reduce_sum(self.patch_moment if self.patch_moment is not None
                                               else zeros(self.dim, self.dim))
        counts = all_reduce_sum(torch.tensor([self.count, self.patch_count], dtype=torch.float64))
        self.count, self.patch_count = (int(c) for c in counts.tolist())

    def stats(self) -> InputStats:
        moment = (self.moment / self.count).cpu()
        patch = None
        if self.with_patches:
            patch = (self.patch_moment / self.patch_count).cpu()
        elif not self.is_conv:
            patch = moment
        return InputStats(moment, (self.sum / self.count).cpu(), self.count, self.kernel, patch,
                          self.patch_count if self.is_conv else self.count)


def _output_positions(hw, conv: nn.Conv2d, padding) -> int:
    pad = (padding, padding) if isinstance(padding, int) else padding
    out = [(hw[d] + 2 * pad[d] - conv.dilation[d] * (conv.kernel_size[d] - 1) - 1) // conv.stride[d] + 1
           for d in range(2)]
    return max(out[0], 0) * max(out[1], 0)


def _resolve_layers(model: nn.Module, names: Optional[Sequence[str]]) -> Dict[str, nn.Module]:
    if names is None:
        return dict(compressible_layers(model))
    layers = {}
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"the model has no layer named {name!r}") from err
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or getattr(module, "groups", 1) != 1:
            raise ValueError(f"layer {name!r} is a {type(module).__name__}; input statistics are collected for "
                             "ungrouped nn.Conv2d and nn.Linear layers only")
        layers[name] = module
    return layers


@torch.no_grad()
def collect_input_stats(model: nn.Module, batches: Iterable[Batch], names: Optional[Sequence[str]] = None, *,
                        patch_limit: int = DEFAULT_PATCH_LIMIT, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                        progress: bool = False) -> Dict[str, InputStats]:
    """``{name: InputStats}`` of the named layers (default: every compressible Conv2d / Linear) from one
    eval-mode pass of ``batches`` (tensors, or tuples whose first item is the input).

    Forward pre-hooks read each layer's input, so any ``nn.Module`` works.  ``patch_limit`` bounds the
    size D = S*kh*kw of the patch moments collected (8*D^2 bytes each); ``chunk_bytes`` the float64
    working set per matmul. Under a process group every rank calls it with the same batches and passes its
    share of the images (image i of a batch on rank i mod world); the sums are added over the ranks, so every
    rank returns the same statistics.
    """
    if patch_limit < 0 or chunk_bytes < 1:
        raise ValueError(f"patch_limit must be >= 0 and chunk_bytes >= 1, got {patch_limit}, {chunk_bytes}")
    layers = _resolve_layers(model, names)
    if not layers:
        raise ValueError("no layers to collect statistics for (the model has no compressible Conv2d / Linear)")
    accs = {name: _Accumulator(module, patch_limit, chunk_bytes) for name, module in layers.items()}
    hooks = [module.register_forward_pre_hook(lambda _m, inputs, acc=accs[name]: acc.add(inputs[0]))
             for name, module in layers.items()]
    was_training = model.training
    model.eval()
    world, rank = get_world_size(), get_rank()
    try:
        for batch in progress_bar(batches, desc="input statistics", enabled=progress, unit="batch"):
            x = (batch[0] if isinstance(batch, (tuple, list)) else batch)[rank::world]  # this rank's share
            if x.shape[0]:
                model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if world > 1:
        for acc in accs.values():
            acc.reduce()
    missing = [name for name, acc in accs.items() if acc.count == 0]
    if missing:
        raise ValueError(f"layers {missing} never ran on the calibration batches (no inputs were seen)")
    return {name: acc.stats() for name, acc in accs.items()}
