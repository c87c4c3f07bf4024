"""The CPU micro-kernels (small GEMM, depthwise stencil, the BatchNorm-ReLU rows) are compiled for AVX-512, AVX2+FMA and baseline x86-64
and picked once at load time. The host runs its own level in every other test; here the correctness tests of
the ops run again in fresh processes with MTD_CPU_ISA lowering the level, so every variant is checked on one
host (an AVX2-only or baseline CPU would run exactly that code)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mtd_kernels

HERE = os.path.dirname(os.path.abspath(__file__))
CORRECTNESS = [
    f"{HERE}/test_ops_cpu.py::test_matches_chain_and_dense",
    f"{HERE}/test_ops_cpu.py::test_large_tile_split_and_single_thread",
    f"{HERE}/test_rank_bridge.py::test_matches_the_reference",
    f"{HERE}/test_rank_bridge.py::test_other_layouts",
    f"{HERE}/test_rank_run.py::test_matches_the_reference",
    f"{HERE}/test_bn_relu.py::test_matches_the_reference",
    f"{HERE}/test_bn_relu.py::test_pool_ties_and_dead_windows",
]


def test_the_host_level_is_named():
    assert mtd_kernels.extension_available(), mtd_kernels.extension_error()
    assert mtd_kernels.cpu_isa() in ("avx512", "avx2", "baseline")


@pytest.mark.parametrize("level", ["avx2", "baseline"])
def test_lower_levels_pass_the_op_tests(level):
    # Run from tests/: from the repository root, `python -c` / `-m` would import the source tree's mtd_kernels,
    # which has no compiled extension when the package is installed as a wheel (CI).
    code = ("import mtd_kernels; print(mtd_kernels.__file__); "
            f"assert mtd_kernels.cpu_isa() in ({level!r}, 'baseline'), mtd_kernels.cpu_isa()")
    env = dict(os.environ, MTD_CPU_ISA=level)
    picked = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=HERE)
    assert picked.returncode == 0, picked.stderr[-2000:]  # the level was lowered, never raised
    assert picked.stdout.strip() == mtd_kernels.__file__  # the same package as this process's
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CORRECTNESS],
                          env=env, capture_output=True, text=True, timeout=1200, cwd=HERE)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout
