"""Plain-PyTorch reference implementations of every ``torch.ops.mtd`` op: ``<op>_ref``.

Each is the unfused chain of standard operations its op file describes (``mtd_kernels/ops/<op>.py``), with
the op's own arguments and defaults (ints or pairs accepted for stride/padding/dilation); the fused kernels
are tested against these.
"""
from __future__ import annotations

from .ops import OPS
from .ops._signature import function

for _op in OPS.values():
    globals()[f"{_op.name}_ref"] = function(_op.schema, _op.reference, f"{_op.name}_ref",
                                            f"The plain-PyTorch {_op.name} (checked arguments).\n{_op.doc}")
del _op

__all__ = [f"{name}_ref" for name in OPS]
