"""Build script: packages ``mtd`` (python/mtd) and ``mtd_kernels`` and the extension ``mtd_kernels._C``.

Environment overrides:
  MTD_CUDA=auto|0|1   compile csrc/cuda/*.cu (auto: only when torch has CUDA and nvcc is found)
  MTD_NO_EXT=1        skip the C++ extension entirely (ops then run their pure-PyTorch fallback)
  MTD_DEBUG=1         -O0 -g
"""
from __future__ import annotations

import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    mode = os.environ.get("MTD_CUDA", "auto").strip().lower()
    if mode in ("0", "off", "false", "no"):
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    available = torch.version.cuda is not None and CUDA_HOME is not None and (
        shutil.which("nvcc") is not None or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )
    if mode in ("1", "on", "true", "yes") and not available:
        raise RuntimeError(
            "MTD_CUDA=1 but this torch has no CUDA (torch.version.cuda is None) or nvcc was not found"
        )
    return available


def _extensions():
    if os.environ.get("MTD_NO_EXT", "0") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    debug = os.environ.get("MTD_DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp", "-std=c++17"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    ext_kwargs = dict(
        name="mtd_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if _want_cuda():
        cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        ext = CUDAExtension(
            sources=sources + cu,
            extra_compile_args={
                "cxx": cxx + ["-DMTD_WITH_CUDA"],
                "nvcc": ["-O3", "-DMTD_WITH_CUDA", "--use_fast_math", "-std=c++17", "-lineinfo"],
            },
            **{k: v for k, v in ext_kwargs.items() if k != "sources"},
        )
    else:
        ext = CppExtension(extra_compile_args={"cxx": cxx}, **ext_kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(where="python") + find_packages(include=["mtd_kernels", "mtd_kernels.*"]),
    package_dir={"mtd": "python/mtd", "mtd_kernels": "mtd_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
