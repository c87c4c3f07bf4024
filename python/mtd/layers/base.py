"""What the three decomposed conv layers share: geometry, backend switch, rel_error, dense export."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._factorized import FactorizedModule
from ._geometry import Padding, same_padding, to_padding, to_pair
from .counting import conv_output_hw


class FactorizedConv2d(FactorizedModule):
    """Base of CPConv2d / CP4Conv2d / TuckerConv2d.

    Subclasses hold their factors as ``nn.Conv2d`` submodules (``first`` ... ``last``; only ``last``
    has a bias) and implement ``_spatial_convs``, ``_fused_op``, ``dense_weight`` and ``macs``.
    ``backend="torch"`` runs the submodules as a plain chain; ``backend="fused"`` passes the same
    weight tensors to the ``torch.ops.mtd`` op.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation,
                 backend: str, relu: bool):
        super().__init__(backend)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = to_pair(kernel_size, "kernel_size", 1)
        self.stride = to_pair(stride, "stride", 1)
        self.padding: Padding = to_padding(padding, self.stride)
        self.dilation = to_pair(dilation, "dilation", 1)
        self.relu = bool(relu)

    # -- properties ---------------------------------------------------------------------------
    @property
    def has_bias(self) -> bool:
        return self.last.bias is not None

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._backend == "torch":
            out = self.last(self._spatial_chain(self.first(x)))
            return torch.relu(out) if self.relu else out
        pad = self._op_padding()
        if pad is None:  # asymmetric 'same' (even kernel): pad the input; first 1x1 has no bias
            top, bottom, left, right = same_padding(self.kernel_size, self.dilation)
            x, pad = F.pad(x, (left, right, top, bottom)), [0, 0]
        return self._fused_op(x, pad)

    def _spatial_chain(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self._spatial_convs():
            x = conv(x)
        return x

    def _op_padding(self) -> Optional[List[int]]:
        """Symmetric padding for the fused op, or None when 'same' needs asymmetric padding."""
        if self.padding != "same":
            return list(self.padding)
        top, bottom, left, right = same_padding(self.kernel_size, self.dilation)
        return [top, left] if (top, left) == (bottom, right) else None

    # -- subclass hooks -----------------------------------------------------------------------
    def _spatial_convs(self) -> Sequence[nn.Conv2d]:
        raise NotImplementedError

    def _fused_op(self, x: torch.Tensor, padding: List[int]) -> torch.Tensor:
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The reconstructed (T, S, kh, kw) kernel."""
        raise NotImplementedError

    def macs(self, input_hw: Sequence[int]) -> int:
        """Multiply-accumulates for one (S, H, W) input."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------
    @property
    def kernel_shape(self) -> tuple:
        """(T, S, kh, kw) of the dense kernel this layer stands for."""
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def output_hw(self, input_hw: Sequence[int]):
        return conv_output_hw(input_hw, self.kernel_size, self.stride, self.padding, self.dilation)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """An equivalent nn.Conv2d holding the reconstructed weight (ReLU flag not included)."""
        w = self.first.weight
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=self.has_bias, device=w.device, dtype=w.dtype)
        conv.weight.copy_(self.dense_weight())
        if self.has_bias:
            conv.bias.copy_(self.last.bias)
        return conv

    def _load_factors(self, weights: Sequence[torch.Tensor], conv: nn.Conv2d, rel_error: float) -> None:
        """Copy decomposition factors (float64) into the submodules, and the conv's bias."""
        with torch.no_grad():
            for module, weight in zip([self.first, *self._spatial_convs(), self.last], weights):
                module.weight.copy_(weight)
            if conv.bias is not None:
                self.last.bias.copy_(conv.bias)
        self.rel_error = rel_error

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, bias={self.has_bias}, "
                f"backend={self._backend!r}, relu={self.relu}, rel_error={self.rel_error:.4g}")


def conv_geometry(conv: nn.Conv2d) -> dict:
    """Constructor kwargs that reproduce a conv's geometry."""
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                device=conv.weight.device, dtype=conv.weight.dtype)
