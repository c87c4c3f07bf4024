"""Import safety and the extension fallback: the guarantees `import mtd` makes on any machine."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import mtd_kernels


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_extension_is_built_and_registered():
    # CI builds the extension; a silently missing build would make every CPU test use the fallback.
    assert mtd_kernels.extension_available(), mtd_kernels.extension_error()
    x = torch.randn(1, 2, 5, 5)
    w = [torch.randn(3, 2, 1, 1), torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1)]
    for op in ("cp_conv2d", "cp4_conv2d", "tucker_conv2d"):
        cpu_line = [ln for ln in torch._C._dispatch_dump(f"mtd::{op}").splitlines() if ln.startswith("CPU:")]
        assert cpu_line and ".cpp" in cpu_line[0], cpu_line  # the C++ kernel, not the Python fallback
    torch.ops.mtd.cp_conv2d(x, *w, None, [1, 1], [1, 1], [1, 1], False)


def test_import_never_queries_the_gpu():
    res = _run("""
        import torch
        def boom(*a, **k):
            raise AssertionError("GPU queried at import")
        torch.cuda.is_available = boom
        torch.cuda.device_count = boom
        torch.cuda.get_device_capability = boom
        import mtd, mtd_kernels, mtd_kernels.triton, mtd_kernels.dispatch
        print("ok")
    """)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_import_without_triton():
    res = _run("""
        import sys
        sys.modules["triton"] = None  # any `import triton` now raises ImportError
        import mtd, mtd_kernels, mtd_kernels.triton
        from mtd_kernels.dispatch import cuda_kernel
        print("ok")
    """)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_missing_extension_falls_back_and_warns_once():
    res = _run("""
        import sys, warnings
        sys.modules["mtd_kernels._C"] = None  # as if the extension had not been built
        import torch, mtd_kernels
        from mtd_kernels.reference import cp_conv2d_ref
        assert not mtd_kernels.extension_available()
        torch.manual_seed(0)
        x = torch.randn(2, 4, 6, 6)
        w = [torch.randn(3, 4, 1, 1), torch.randn(3, 1, 3, 3), torch.randn(5, 3, 1, 1)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y1 = mtd_kernels.cp_conv2d(x, *w, padding=1)
            y2 = mtd_kernels.cp_conv2d(x, *w, padding=1)
        msgs = [str(c.message) for c in caught if "mtd_kernels._C" in str(c.message)]
        assert len(msgs) == 1, msgs
        ref = torch.nn.functional.conv2d(torch.nn.functional.conv2d(torch.nn.functional.conv2d(
            x, w[0]), w[1], padding=1, groups=3), w[2])
        assert torch.allclose(y1, ref, atol=1e-5) and torch.equal(y1, y2)
        print("ok")
    """)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr + res.stdout


def test_cuda_backend_switch_validates():
    from mtd_kernels.dispatch import cuda_backend, set_cuda_backend

    with pytest.raises(ValueError, match="unknown CUDA backend"):
        set_cuda_backend("opencl")
    set_cuda_backend("torch")
    try:
        assert cuda_backend() == "torch"
    finally:
        set_cuda_backend(None)


# third-party imports that are optional on purpose: each is guarded where it is used
OPTIONAL_IMPORTS = {"triton": "GPU kernels", "onnx": "export extra", "onnxruntime": "export extra",
                    "openvino": "bench extra (the speed table runs it where installed)"}
IMPORT_TO_DISTRIBUTION = {"PIL": "pillow"}


def test_every_library_import_is_a_declared_dependency():
    """What `pip install .` installs covers every module the library imports (no dev-only dependency)."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, re.M | re.S).group(1)
    declared = {re.split(r"[<>=!~ ]", d.strip().strip('"'))[0].lower() for d in deps.split(",") if d.strip()}
    imported = set()
    for path in [*(root / "python" / "mtd").rglob("*.py"), *(root / "mtd_kernels").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"mtd", "mtd_kernels", "__future__"} - set(OPTIONAL_IMPORTS)
    missing = {IMPORT_TO_DISTRIBUTION.get(m, m).lower() for m in third_party} - declared
    assert not missing, f"imported by the library but not in pyproject.toml's dependencies: {sorted(missing)}"
