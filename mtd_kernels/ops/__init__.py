"""The op specifications of ``torch.ops.mtd.*`` (one op per file): schema, chain, argument check.

Nothing here registers anything or knows about a backend (see ``mtd_kernels/_register.py``).
"""
from . import cp4_conv2d, cp_conv2d, tucker_conv2d
from ._spec import Call, OpSpec

SPECS = {spec.name: spec for spec in (cp_conv2d.SPEC, cp4_conv2d.SPEC, tucker_conv2d.SPEC)}

__all__ = ["SPECS", "OpSpec", "Call"]
