"""The op descriptions of ``torch.ops.mtd.*`` (one op per file): schema, argument check, stages, reference.

``SPECS`` holds the chain ops (one conv chain each: cp_conv2d, cp4_conv2d, tucker_conv2d); ``OPS`` every
op, the cross-layer ``rank_bridge`` and ``rank_run`` and the training op ``bn_relu`` (and its backward) too, as the :class:`OpDescription` from which the Python functions
``mtd_kernels.<op>`` and ``mtd_kernels.reference.<op>_ref`` are generated. Nothing here registers anything
or knows about a backend (see ``mtd_kernels/_register.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import bn_relu, cp4_conv2d, cp_conv2d, rank_bridge, rank_run, tucker_conv2d
from ._spec import Call, OpSpec

SPECS = {spec.name: spec for spec in (cp_conv2d.SPEC, cp4_conv2d.SPEC, tucker_conv2d.SPEC)}


@dataclass(frozen=True)
class OpDescription:
    name: str
    schema: str
    doc: str  # the op file's docstring: shapes of every argument
    reference: Callable  # the checked plain-PyTorch implementation, the op's own arguments


OPS = {
    **{name: OpDescription(name, spec.schema, module.__doc__, spec.reference)
       for (name, spec), module in zip(SPECS.items(), (cp_conv2d, cp4_conv2d, tucker_conv2d))},
    rank_bridge.NAME: OpDescription(rank_bridge.NAME, rank_bridge.SCHEMA, rank_bridge.__doc__, rank_bridge.reference),
    rank_run.NAME: OpDescription(rank_run.NAME, rank_run.SCHEMA, rank_run.__doc__, rank_run.reference),
    bn_relu.NAME: OpDescription(bn_relu.NAME, bn_relu.SCHEMA, bn_relu.__doc__, bn_relu.reference),
    bn_relu.BACKWARD_NAME: OpDescription(bn_relu.BACKWARD_NAME, bn_relu.BACKWARD_SCHEMA, bn_relu.__doc__,
                                         bn_relu.backward_reference),
}

__all__ = ["SPECS", "OPS", "OpDescription", "OpSpec", "Call"]
