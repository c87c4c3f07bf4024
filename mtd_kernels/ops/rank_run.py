"""``mtd::rank_run`` — a whole run of rank bridges in one call: ``rank_bridge`` applied bridge after bridge.

    input (N, C, H, W)   the run's input (its first bridge's u)
    weights              every bridge's tensors in order: its spatial factor(s) (1 or 2), then w_last, bias and
                         w_next where that bridge has them (shapes as in ``rank_bridge``)
    meta (12 per bridge) n_spatial, has_last, has_bias, has_next, stride (2), padding (2), dilation (2), relu, pool
    packed               ``mtd_kernels.rank_run_pack(weights, meta)``: the factors in the CPU kernel's layouts, kept
                         by the caller so that no call packs them again; ``[]``: packed during the call
      --> bridge k's output is bridge k+1's input; the last one's is the result, laid out like ``input``

This is what ``RankSpaceRun`` (``mtd.layers.rank_space``) calls at inference: on the CPU one C++ loop
(``csrc/cpu/rank_run.cpp``) runs every bridge's fused kernel on prepacked factors, with no Python, dispatcher or
packing between layers. ``packed`` never changes the result, only the speed (the reference ignores it).
This file is the op's one description: schema, meta layout, argument check, output shape and reference.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from . import rank_bridge as bridge
from ._chain import pair
from ._signature import bind

NAME = "rank_run"
SCHEMA = "rank_run(Tensor input, Tensor[] weights, int[] meta, Tensor[] packed) -> Tensor"
META_FIELDS = ("n_spatial", "has_last", "has_bias", "has_next", "stride_h", "stride_w", "pad_h", "pad_w",
               "dilation_h", "dilation_w", "relu", "pool")


def bridge_meta(n_spatial: int, w_last: bool, bias: bool, w_next: bool, stride, padding, dilation, relu: bool,
                pool: bool) -> List[int]:
    """One bridge's entry of ``meta`` (:data:`META_FIELDS`)."""
    return [int(n_spatial), int(w_last), int(bias), int(w_next), *pair(stride, "stride"), *pair(padding, "padding"),
            *pair(dilation, "dilation"), int(relu), int(pool)]


def split(weights: Sequence[torch.Tensor], meta: Sequence[int]) -> List[tuple]:
    """Per bridge, the arguments of ``rank_bridge`` after its input: (spatial, w_last, bias, w_next, stride,
    padding, dilation, relu, pool). ValueError when meta and weights disagree (the C++ messages)."""
    meta = [int(v) for v in meta]
    n = len(META_FIELDS)
    if not meta or len(meta) % n:
        raise ValueError(f"mtd.rank_run: meta must hold {n} integers per bridge, got {len(meta)}")
    weights = list(weights)
    out, used = [], 0

    def take(i: int) -> torch.Tensor:
        nonlocal used
        if used >= len(weights):
            raise ValueError(f"mtd.rank_run: meta asks for more weights than the {len(weights)} given (at bridge {i})")
        used += 1
        return weights[used - 1]

    for i in range(len(meta) // n):
        m = meta[i * n:(i + 1) * n]
        if m[0] not in (1, 2):
            raise ValueError(f"mtd.rank_run: meta of bridge {i}: the spatial stage has 1 or 2 factors, got {m[0]}")
        for what, v in zip(META_FIELDS, m):
            if what in ("has_last", "has_bias", "has_next", "relu", "pool") and v not in (0, 1):
                raise ValueError(f"mtd.rank_run: meta of bridge {i}: {what} must be 0 or 1, got {v}")
        spatial = [take(i) for _ in range(m[0])]
        w_last = take(i) if m[1] else None
        bias = take(i) if m[2] else None
        w_next = take(i) if m[3] else None
        out.append((spatial, w_last, bias, w_next, (m[4], m[5]), (m[6], m[7]), (m[8], m[9]), bool(m[10]),
                    bool(m[11])))
    if used != len(weights):
        raise ValueError(f"mtd.rank_run: meta describes {used} weights, {len(weights)} were given")
    return out


def parse(args: Sequence, kwargs: Optional[dict] = None) -> Tuple[torch.Tensor, List[torch.Tensor], List[int],
                                                                     List[torch.Tensor]]:
    """(input, weights, meta, packed) of one call."""
    v = bind(SCHEMA, args, kwargs)
    return v["input"], list(v["weights"]), [int(m) for m in v["meta"]], list(v["packed"])


def _bridge_call(x: torch.Tensor, i: int, args: tuple) -> Tuple[bridge.BridgeCall, Tuple[int, ...]]:
    """Bridge ``i``'s checked call on ``x`` and its output shape."""
    call = bridge.BridgeCall(x, *args)
    try:
        return call, bridge.output_shape(call)
    except ValueError as e:  # name the bridge: its input is the previous one's output
        raise ValueError(f"mtd.rank_run: bridge {i} (input {list(x.shape)}): {e}") from None


def output_shape(x: torch.Tensor, weights: Sequence[torch.Tensor], meta: Sequence[int]) -> Tuple[int, ...]:
    """The run's output shape (checking every bridge on the shape it receives)."""
    shape = tuple(x.shape)
    for i, args in enumerate(split(weights, meta)):
        shape = _bridge_call(x.new_empty(shape) if i else x, i, args)[1]
    return shape


def forward(x: torch.Tensor, weights: Sequence[torch.Tensor], meta: Sequence[int]) -> torch.Tensor:
    """The plain-PyTorch bridges one after the other (differentiable)."""
    y = x
    for i, args in enumerate(split(weights, meta)):
        y = bridge.forward(_bridge_call(y, i, args)[0])
    return y.contiguous(memory_format=bridge.layout(x))


def reference(*args, **kwargs) -> torch.Tensor:
    """The checked plain-PyTorch run (the op's own arguments; ``packed`` is ignored)."""
    x, weights, meta, _ = parse(args, kwargs)
    return forward(x, weights, meta)
