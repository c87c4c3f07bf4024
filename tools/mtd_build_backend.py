"""In-tree PEP 517 backend: setuptools, built against the torch that is already installed.

Why: the extension must link against the user's torch.  Under pip's build isolation that torch is
invisible ("No module named 'torch'"), and naming ``torch`` as a build requirement makes pip pull a
different (multi-GB CUDA) torch into the isolated environment and link against *it*.  This backend
keeps isolation for setuptools/wheel but, when torch is not importable there, appends the
interpreter's own site-packages (where the runtime torch lives) to ``sys.path``; the isolated
environment's packages still come first.  ``pip install --no-build-isolation .`` works as well.
"""
from __future__ import annotations

import sys
import sysconfig


def _expose_runtime_torch() -> None:
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        path = paths.get(key)
        if path and path not in sys.path:
            sys.path.append(path)
    try:
        import torch  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "mtd builds its C++/CUDA extension against the installed PyTorch, but torch is not "
            "installed for " + sys.executable + ". Install it first, e.g. `pip install torch`, "
            "then `pip install .` again."
        ) from exc


_expose_runtime_torch()

# every PEP 517 hook is setuptools' own; only the import path above differs
from setuptools.build_meta import *  # noqa: E402,F401,F403
