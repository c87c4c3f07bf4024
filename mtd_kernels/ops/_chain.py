"""What the three fused ops have in common: each is a chain of plain convolutions.

A *stage* is one ``conv2d(x, weight, stride, padding, dilation, groups)`` without bias; the op's
bias and optional ReLU come after the last stage.  The stage list is the single description of an
op's math: the reference implementation, the fake (meta) kernel and the autograd formula all read
it, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Pair = Tuple[int, int]


@dataclass(frozen=True)
class Stage:
    weight: torch.Tensor
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1


def pair(value, name: str) -> Pair:
    """Normalise an int or a length-2 sequence to a pair of non-negative ints."""
    if isinstance(value, int):
        out = (value, value)
    else:
        out = tuple(int(v) for v in value)
        if len(out) == 1:
            out = (out[0], out[0])
    if len(out) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return out  # type: ignore[return-value]


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def wants_channels_last(x: torch.Tensor) -> bool:
    """The rule every implementation uses to pick the output layout (same as the C++ side)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def check_common(
    op: str,
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    bias: Optional[torch.Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> None:
    """Clear errors for inputs every op rejects."""
    if x.dim() != 4:
        raise ValueError(f"mtd.{op}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    for w in weights:
        if w.dim() != 4:
            raise ValueError(f"mtd.{op}: every factor must be a 4-D conv weight, got shape {tuple(w.shape)}")
        if w.dtype != x.dtype or w.device != x.device:
            raise ValueError(
                f"mtd.{op}: factors must match the input's dtype and device "
                f"({x.dtype}, {x.device}), got {w.dtype} on {w.device}"
            )
    if bias is not None and (bias.dtype != x.dtype or bias.device != x.device):
        raise ValueError(f"mtd.{op}: bias must match the input's dtype and device")
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        raise ValueError(f"mtd.{op}: stride, padding and dilation must be pairs")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"mtd.{op}: stride and dilation must be >= 1 and padding >= 0, "
            f"got stride={list(stride)} padding={list(padding)} dilation={list(dilation)}"
        )
    w_first, w_last = weights[0], weights[-1]
    if w_first.shape[2:] != (1, 1) or w_last.shape[2:] != (1, 1):
        raise ValueError(f"mtd.{op}: the first and last factors must be 1x1 conv weights")
    if w_first.shape[1] != x.shape[1]:
        raise ValueError(
            f"mtd.{op}: input has {x.shape[1]} channels but the first factor expects {w_first.shape[1]}"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != w_last.shape[0]):
        raise ValueError(f"mtd.{op}: bias must have shape ({w_last.shape[0]},), got {tuple(bias.shape)}")


def run_stages(x: torch.Tensor, stages: Sequence[Stage]) -> List[torch.Tensor]:
    """Forward through the stages; returns every activation, the input first."""
    acts = [x]
    for st in stages:
        acts.append(F.conv2d(acts[-1], st.weight, None, st.stride, st.padding, st.dilation, st.groups))
    return acts


def output_shape(x: torch.Tensor, stages: Sequence[Stage]) -> Tuple[int, int, int, int]:
    h, w = x.shape[2], x.shape[3]
    for st in stages:
        kh, kw = st.weight.shape[2], st.weight.shape[3]
        h = conv_out_size(h, kh, st.stride[0], st.padding[0], st.dilation[0])
        w = conv_out_size(w, kw, st.stride[1], st.padding[1], st.dilation[1])
    if h < 1 or w < 1:
        raise ValueError(
            f"mtd: input of spatial size {tuple(x.shape[2:])} is too small for this kernel "
            f"(output would be {h}x{w})"
        )
    return (x.shape[0], stages[-1].weight.shape[0], h, w)


def reference_forward(
    x: torch.Tensor, stages: Sequence[Stage], bias: Optional[torch.Tensor], relu: bool
) -> torch.Tensor:
    """The plain-PyTorch chain: what every fused kernel must reproduce."""
    out = run_stages(x, stages)[-1]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    if relu:
        out = torch.relu(out)
    fmt = torch.channels_last if wants_channels_last(x) else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


def empty_output(x: torch.Tensor, stages: Sequence[Stage]) -> torch.Tensor:
    fmt = torch.channels_last if wants_channels_last(x) else torch.contiguous_format
    return x.new_empty(output_shape(x, stages)).contiguous(memory_format=fmt)


def chain_backward(
    x: torch.Tensor,
    stages: Sequence[Stage],
    grad_out: torch.Tensor,
    needs_input_grad: Sequence[bool],
) -> Tuple[Optional[torch.Tensor], List[Optional[torch.Tensor]]]:
    """Gradients of the bias-free chain w.r.t. its input and each stage weight.

    The intermediates are recomputed (not saved in forward), which keeps a fused layer's training
    memory at that of one conv.  ``needs_input_grad`` is (input, *weights).
    """
    acts = run_stages(x, stages[:-1])
    g = grad_out
    weight_grads: List[Optional[torch.Tensor]] = [None] * len(stages)
    for i in reversed(range(len(stages))):
        st = stages[i]
        need_in = any(bool(n) for n in needs_input_grad[: i + 1])  # input or an earlier weight
        need_w = bool(needs_input_grad[i + 1])
        if not (need_in or need_w):
            break
        gi, gw, _ = torch.ops.aten.convolution_backward(
            g, acts[i], st.weight, None, list(st.stride), list(st.padding), list(st.dilation),
            False, [0, 0], st.groups, [need_in, need_w, False],
        )
        weight_grads[i] = gw
        g = gi
        if not need_in:
            break
    grad_x = g if needs_input_grad[0] else None  # the loop ran down to stage 0
    return grad_x, weight_grads
