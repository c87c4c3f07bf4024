"""The one ``torch.library`` handle of the ``mtd`` namespace.

Every schema of ``torch.ops.mtd.*`` is defined exactly once, in the op's own file in this folder,
through this handle.  The C++ extension only *implements* them (``TORCH_LIBRARY_IMPL(mtd, CPU, m)``).
"""
import torch

LIB = torch.library.Library("mtd", "DEF")
