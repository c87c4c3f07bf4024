"""``mtd::rank_bridge`` — rank space across layers: from one layer's R-channel map to the next one's.

    u (N, R1, H, W)        layer i's input after its first 1x1 factor
      --spatial: depthwise (R1, 1, kh, kw) | CP4 pair (R1, 1, kh, 1), (R1, 1, 1, kw) | dense core (R2, R1, kh, kw),
        stride/padding/dilation (a CP4 pair splits them: rows to the first, columns to the second)
      --> (N, R2, Ho, Wo)
      --w_last (T, R2, 1, 1), optional (without it the spatial stage is the layer: a dense conv)
      + bias (T,) [ReLU] [2x2 / stride 2 max-pool, floor]
      --w_next (R, T, 1, 1), optional: layer i+1's first 1x1 (without it: the T-channel map, a run's tail)
      --> (N, R or T, Hp, Wp)

The T-channel map between the layers is what the fused kernel never writes (``csrc/cpu/rank_bridge.cpp``).
This file is the op's one description: schema, argument check, stages, output shape and reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._chain import Pair, Stage, conv_out_size, pair, wants_channels_last
from ._signature import bind

NAME = "rank_bridge"
SCHEMA = (
    "rank_bridge(Tensor input, Tensor[] spatial, Tensor? w_last=None, Tensor? bias=None, Tensor? w_next=None, "
    "int[2] stride=1, int[2] padding=0, int[2] dilation=1, bool relu=False, bool pool=False) -> Tensor"
)


@dataclass(frozen=True)
class BridgeCall:
    """One call's arguments, normalised."""

    x: torch.Tensor
    spatial: List[torch.Tensor]
    w_last: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    w_next: Optional[torch.Tensor]
    stride: Pair
    padding: Pair
    dilation: Pair
    relu: bool
    pool: bool

    def tensors(self) -> List[Optional[torch.Tensor]]:
        """(input, *spatial, w_last, bias, w_next): what autograd sees."""
        return [self.x, *self.spatial, self.w_last, self.bias, self.w_next]


def parse(args: Sequence, kwargs: Optional[dict] = None) -> BridgeCall:
    """The op's arguments (positional, or trailing ones by keyword) as a :class:`BridgeCall`."""
    values = bind(SCHEMA, args, kwargs)
    return BridgeCall(values["input"], list(values["spatial"]), values["w_last"], values["bias"], values["w_next"],
                      pair(values["stride"], "stride"), pair(values["padding"], "padding"),
                      pair(values["dilation"], "dilation"), bool(values["relu"]), bool(values["pool"]))


def _check_like(x: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"mtd.rank_bridge: {what} must match the input's dtype and device ({x.dtype}, {x.device}), "
                         f"got {t.dtype} on {t.device}")


def check(call: BridgeCall) -> int:
    """ValueError naming the problem (the same conditions and messages as ``check_bridge`` in C++);
    returns R2, the channels leaving the spatial stage."""
    x, spatial = call.x, call.spatial
    if x.dim() != 4:
        raise ValueError(f"mtd.rank_bridge: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if len(spatial) not in (1, 2):
        raise ValueError("mtd.rank_bridge: spatial must hold one factor (depthwise or dense core) or two (CP4 "
                         f"vertical, horizontal), got {len(spatial)}")
    for w in spatial:
        if w.dim() != 4:
            raise ValueError(f"mtd.rank_bridge: every factor must be a 4-D conv weight, got shape {tuple(w.shape)}")
        _check_like(x, w, "factors")
    if min(call.stride) < 1 or min(call.dilation) < 1 or min(call.padding) < 0:
        raise ValueError(f"mtd.rank_bridge: stride and dilation must be >= 1 and padding >= 0, got "
                         f"stride={list(call.stride)} padding={list(call.padding)} dilation={list(call.dilation)}")
    c = x.shape[1]
    if len(spatial) == 2:
        v, h = spatial
        if not (v.shape[0] == c and v.shape[1] == 1 and v.shape[3] == 1 and h.shape[0] == c and h.shape[1] == 1
                and h.shape[2] == 1):
            raise ValueError(f"mtd.rank_bridge: a CP4 pair must be (C, 1, kh, 1) and (C, 1, 1, kw) for the input's "
                             f"C = {c} channels; got {tuple(v.shape)}, {tuple(h.shape)}")
        r2 = c
    else:
        w = spatial[0]
        if not (w.shape[1] == c or (w.shape[1] == 1 and w.shape[0] == c)):
            raise ValueError(f"mtd.rank_bridge: the spatial factor must be depthwise (C, 1, kh, kw) or dense "
                             f"(R2, C, kh, kw) for the input's C = {c} channels; got {tuple(w.shape)}")
        r2 = w.shape[0]
    t = r2
    if call.w_last is not None:
        _check_like(x, call.w_last, "w_last")
        if call.w_last.dim() != 4 or call.w_last.shape[1:] != (r2, 1, 1):
            raise ValueError(f"mtd.rank_bridge: w_last must be (T, {r2}, 1, 1), got {tuple(call.w_last.shape)}")
        t = call.w_last.shape[0]
    if call.bias is not None:
        _check_like(x, call.bias, "bias")
        if call.bias.dim() != 1 or call.bias.shape[0] != t:
            raise ValueError(f"mtd.rank_bridge: bias must have shape ({t},), got {tuple(call.bias.shape)}")
    if call.w_next is not None:
        _check_like(x, call.w_next, "w_next")
        if call.w_next.dim() != 4 or call.w_next.shape[1:] != (t, 1, 1):
            raise ValueError(f"mtd.rank_bridge: w_next must be (R, {t}, 1, 1), got {tuple(call.w_next.shape)}")
    return r2


def spatial_stages(call: BridgeCall) -> List[Stage]:
    """The spatial factor(s) as bias-free conv stages."""
    c = call.x.shape[1]
    if len(call.spatial) == 2:
        (sh, sw), (ph, pw), (dh, dw) = call.stride, call.padding, call.dilation
        v, h = call.spatial
        return [Stage(v, (sh, 1), (ph, 0), (dh, 1), groups=c), Stage(h, (1, sw), (0, pw), (1, dw), groups=c)]
    w = call.spatial[0]
    groups = 1 if w.shape[1] == c else c
    return [Stage(w, call.stride, call.padding, call.dilation, groups)]


def output_shape(call: BridgeCall) -> Tuple[int, int, int, int]:
    """(N, C_out, Hp, Wp) of a checked call; ValueError when the map is too small for the kernel or the pool."""
    r2 = check(call)
    h, w = call.x.shape[2], call.x.shape[3]
    for st in spatial_stages(call):
        kh, kw = st.weight.shape[2], st.weight.shape[3]
        h = conv_out_size(h, kh, st.stride[0], st.padding[0], st.dilation[0])
        w = conv_out_size(w, kw, st.stride[1], st.padding[1], st.dilation[1])
    if h < 1 or w < 1:
        raise ValueError(f"mtd.rank_bridge: input of spatial size ({call.x.shape[2]}, {call.x.shape[3]}) is too "
                         f"small for this kernel (output would be {h}x{w})")
    if call.pool:
        if h < 2 or w < 2:
            raise ValueError(f"mtd.rank_bridge: the {h}x{w} map is too small for the 2x2 max-pool")
        h, w = h // 2, w // 2
    t = call.w_last.shape[0] if call.w_last is not None else r2
    c_out = call.w_next.shape[0] if call.w_next is not None else t
    return (call.x.shape[0], c_out, h, w)


def layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if wants_channels_last(x) else torch.contiguous_format


def forward(call: BridgeCall) -> torch.Tensor:
    """The plain-PyTorch stages of a checked call (differentiable): what every kernel must reproduce."""
    y = call.x
    for st in spatial_stages(call):
        y = F.conv2d(y, st.weight, None, st.stride, st.padding, st.dilation, st.groups)
    if call.w_last is not None:
        y = F.conv2d(y, call.w_last)
    if call.bias is not None:
        y = y + call.bias.view(1, -1, 1, 1)
    if call.relu:
        y = torch.relu(y)
    if call.pool:
        y = F.max_pool2d(y, 2, 2)
    if call.w_next is not None:
        y = F.conv2d(y, call.w_next)
    return y.contiguous(memory_format=layout(call.x))


def reference(*args, **kwargs) -> torch.Tensor:
    """The checked plain-PyTorch bridge (the op's own arguments)."""
    call = parse(args, kwargs)
    output_shape(call)
    return forward(call)
