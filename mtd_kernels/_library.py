"""The one ``torch.library`` handle of the ``mtd`` namespace.

Every schema of ``torch.ops.mtd.*`` is written once, in its op's file in ``mtd_kernels/ops``, and
defined through this handle by ``mtd_kernels/_register.py``.  The C++ extension only *implements*
them (``TORCH_LIBRARY_IMPL(mtd, CPU, m)``).
"""
import torch

LIB = torch.library.Library("mtd", "DEF")
