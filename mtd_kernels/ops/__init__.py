"""Schemas and registrations of ``torch.ops.mtd.*`` (one op per file)."""
from . import cp_conv2d, cp4_conv2d, tucker_conv2d  # noqa: F401  (each defines its schema)
from ._register import OPS, register_cpu_fallbacks

__all__ = ["OPS", "register_cpu_fallbacks"]
