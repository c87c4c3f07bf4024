"""Parameter and multiply-accumulate (MAC) counts of dense and decomposed layers, for one sample."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

from torch import nn

from ._geometry import to_pair


def conv_output_hw(input_hw: Sequence[int], kernel_size, stride=1, padding: Union[int, Sequence[int], str] = 0,
                   dilation=1) -> Tuple[int, int]:
    """Spatial output size of a conv (padding may be 'same' or 'valid')."""
    h, w = (int(v) for v in input_hw)
    if isinstance(padding, str):
        if padding == "same":
            return (h, w)
        padding = 0  # 'valid'
    k, s, p, d = (to_pair(kernel_size, "kernel_size", 1), to_pair(stride, "stride", 1),
                  to_pair(padding, "padding", 0), to_pair(dilation, "dilation", 1))
    out = tuple((size + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, size in enumerate((h, w)))
    if min(out) < 1:
        raise ValueError(f"input {tuple(input_hw)} is too small for kernel {k} with padding {p}, dilation {d}")
    return out  # type: ignore[return-value]


def conv_macs(conv: nn.Conv2d, input_hw: Sequence[int]) -> int:
    """MACs of a dense (possibly grouped) nn.Conv2d on one (C, H, W) input; bias adds not counted."""
    ho, wo = conv_output_hw(input_hw, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    kh, kw = conv.kernel_size
    return conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * ho * wo


def linear_macs(linear: nn.Linear) -> int:
    """MACs of an nn.Linear on one input row."""
    return linear.in_features * linear.out_features


def num_parameters(module: nn.Module) -> int:
    """Number of parameters (weights and biases) of a module."""
    return sum(p.numel() for p in module.parameters())


def module_macs(module: nn.Module, input_hw: Sequence[int]) -> int:
    """MACs of a dense conv / linear or a decomposed layer (anything with ``.macs(input_hw)``)."""
    if hasattr(module, "macs"):
        return int(module.macs(input_hw))
    if isinstance(module, nn.Conv2d):
        return conv_macs(module, input_hw)
    if isinstance(module, nn.Linear):
        return linear_macs(module)
    raise TypeError(f"no MAC count for {type(module).__name__}")
