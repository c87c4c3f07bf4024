"""Compiles every csrc/cuda/*.cu with the installed nvcc (no GPU needed, nothing is linked or run).

The objects are built against the installed torch's headers only, so this works with a CPU-only
torch. Two adaptations make that possible, both harmless for the real CUDA build:
  * the CPU wheel lacks the generated ``c10/cuda/impl/cuda_cmake_macros.h``; ``c10/cuda/CUDAMacros.h``
    documents ``C10_CUDA_NO_CMAKE_CONFIGURE_FILE`` to skip it (it only matters for Windows DLL exports);
  * the kernels use only ``c10/cuda`` headers (CUDAGuard, CUDAStream, CUDAException), never
    ``ATen/cuda/CUDAContext.h``, which needs cuBLAS / cuSPARSE headers a bare nvcc may not have.
To keep it cheap on 2 cores, all sources compile as ONE translation unit (a generated file that
#includes each .cu; torch's headers are then parsed once, not once per file) with the host side at
-O0: about 40 s of CPU time (~2 min wall on a loaded 2-core box). ``MTD_CUDA_COMPILE_ARCHS`` (default "90")
is a comma-separated list of SM versions to build for, e.g. "90,75" to also build the FMA path
that pre-Ampere GPUs use for fp16/bf16.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else None


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")


def _compile_flags() -> List[str]:
    import torch
    from torch.utils import cpp_extension

    includes = list(cpp_extension.include_paths())
    cuda_include = Path(NVCC).resolve().parent.parent / "include"
    includes += [str(cuda_include), sysconfig.get_paths()["include"], str(ROOT / "csrc")]
    archs = [a.strip() for a in os.environ.get("MTD_CUDA_COMPILE_ARCHS", "90").split(",") if a.strip()]
    flags = ["-c", "-std=c++17", "-DMTD_WITH_CUDA", "-O3", "--use_fast_math", "-lineinfo",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-Xcompiler", "-fPIC"]
    flags += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags += list(cpp_extension.COMMON_NVCC_FLAGS)  # the __CUDA_NO_HALF_* defines torch builds with
    flags += [f"-I{p}" for p in includes]
    generated = Path(includes[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not generated.exists():  # CPU-only torch wheel
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return flags


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compiles all sources as one unity translation unit; returns (nvcc result, object path)."""
    out_dir = tmp_path_factory.mktemp("cuda_objs")
    unity = out_dir / "all_cuda_ops.cu"
    unity.write_text("".join(f'#include "{src}"\n' for src in CUDA_SOURCES))
    obj = out_dir / "all_cuda_ops.o"
    flags = [f if f != "-O3" else "-O0" for f in _compile_flags()]  # host -O0: only compilability matters
    start = time.perf_counter()
    result = subprocess.run([NVCC, *flags, str(unity), "-o", str(obj)], capture_output=True, text=True,
                            timeout=900)
    print(f"\ncompiled {len(CUDA_SOURCES)} CUDA files in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return result, obj


def test_every_op_has_a_cuda_source() -> None:
    names = {s.name for s in CUDA_SOURCES}
    assert {"cp_conv2d.cu", "cp4_conv2d.cu", "tucker_conv2d.cu"} <= names, names


@pytest.mark.parametrize("source", [s.name for s in CUDA_SOURCES])
def test_cuda_source_compiles(compiled, source: str) -> None:
    result, obj = compiled
    mine = [ln for ln in result.stderr.splitlines() if source in ln]
    assert result.returncode == 0, f"nvcc failed ({source}: {mine[:20]}):\n{result.stderr[-6000:]}"
    assert obj.exists() and obj.stat().st_size > 0


def test_no_warnings_in_our_sources(compiled) -> None:
    """Warnings in csrc/cuda are bugs waiting to happen (torch's own headers may warn: ignored)."""
    result, _ = compiled
    ours = [ln for ln in result.stderr.splitlines() if "csrc/cuda/" in ln and "warning" in ln]
    assert not ours, "nvcc warnings in csrc/cuda:\n" + "\n".join(ours)


@pytest.mark.parametrize("source", [s.name for s in CUDA_SOURCES])
def test_object_defines_the_host_entry_point(compiled, source: str) -> None:
    """The object must define mtd::<op>_cuda with the signature csrc/ops.h declares."""
    result, obj = compiled
    if result.returncode != 0 or shutil.which("nm") is None:
        pytest.skip("object not built or nm missing")
    symbols = subprocess.run(["nm", "-C", "--defined-only", str(obj)], capture_output=True, text=True).stdout
    op = Path(source).stem
    assert f"mtd::{op}_cuda(at::Tensor const&" in symbols, f"mtd::{op}_cuda not defined in {source}"


def test_hosts_use_the_shared_checks(compiled) -> None:
    """The CUDA hosts call the checks and output-size formula of csrc/op_checks.cpp (which the CPU
    kernels also use, and tests/test_kernel_dispatch.py checks), instead of a copy of their own."""
    result, obj = compiled
    if result.returncode != 0 or shutil.which("nm") is None:
        pytest.skip("object not built or nm missing")
    undefined = subprocess.run(["nm", "-C", "--undefined-only", str(obj)], capture_output=True, text=True).stdout
    for symbol in ("mtd::output_hw(", "mtd::check_common(", "mtd::check_cp_shapes(", "mtd::check_cp4_shapes(",
                   "mtd::check_tucker_shapes("):
        assert symbol in undefined, f"{symbol} is not called from the CUDA objects"
    defined = subprocess.run(["nm", "-C", "--defined-only", str(obj)], capture_output=True, text=True).stdout
    assert "conv_out_size" not in defined, "a CUDA source defines its own output-size formula"
