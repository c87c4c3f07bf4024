"""OpSpec: everything that defines one chain op, independent of any backend.

An op's file in this folder builds its ``SPEC``; backends (the compiled extension, Triton) and the
registration (``mtd_kernels/_register.py``) read specs, never the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ._chain import Pair, Stage, output_shape, pair, reference_forward
from ._signature import bind


@dataclass(frozen=True)
class Call:
    """One call's arguments, normalised: ``(input, *weights, bias, stride, padding, dilation, relu)``."""

    x: torch.Tensor
    weights: List[torch.Tensor]
    bias: Optional[torch.Tensor]
    stride: Pair
    padding: Pair
    dilation: Pair
    relu: bool

    def kernel_args(self) -> tuple:
        """Positional arguments of a backend kernel (lists for the int[2] geometry)."""
        return (self.x, *self.weights, self.bias, list(self.stride), list(self.padding), list(self.dilation),
                self.relu)


@dataclass(frozen=True)
class OpSpec:
    name: str
    schema: str
    n_weights: int
    # (weights, stride, padding, dilation) -> the op's chain of convolutions
    build_stages: Callable[..., List[Stage]]
    # (x, weights, bias, stride, padding, dilation) -> None; raises ValueError naming the problem
    check: Callable[..., None]

    def parse(self, args: Sequence, kwargs: Optional[dict] = None) -> Call:
        """The op's arguments as a :class:`Call` (the dispatcher may pass trailing ones by keyword)."""
        values = list(bind(self.schema, args, kwargs).values())
        x, weights = values[0], values[1:1 + self.n_weights]
        bias, stride, padding, dilation, relu = values[1 + self.n_weights:]
        return Call(x, list(weights), bias, pair(stride, "stride"), pair(padding, "padding"),
                    pair(dilation, "dilation"), bool(relu))

    def validate(self, call: Call) -> Tuple[int, int, int, int]:
        """The one argument check of every backend: ValueError for bad input, else the output shape."""
        self.check(call.x, call.weights, call.bias, call.stride, call.padding, call.dilation)
        return output_shape(call.x, self.stages(call))

    def stages(self, call: Call) -> List[Stage]:
        return self.build_stages(call.weights, call.stride, call.padding, call.dilation)

    def reference(self, *args, **kwargs) -> torch.Tensor:
        """The plain-PyTorch chain (checked arguments): what every fused kernel must reproduce."""
        call = self.parse(args, kwargs)
        self.validate(call)
        return reference_forward(call.x, self.stages(call), call.bias, call.relu)
