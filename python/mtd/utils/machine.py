"""What a measurement names about the CPU it ran on: the model and the vector extensions that decide speed."""
from __future__ import annotations

import functools
import platform

# /proc/cpuinfo flag -> the name a result row shows, widest first (AVX-512 implies AVX2)
_FEATURES = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx512_bf16", "AVX512_BF16"), ("amx_tile", "AMX"))


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC ..."; ``platform.processor()`` where /proc/cpuinfo is missing)."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The vector extensions that matter here, e.g. ``["AVX-512", "AVX512_BF16"]`` (AVX2 only without AVX-512)."""
    flags = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    found = [name for flag, name in _FEATURES if flag in flags]
    return [f for f in found if not (f == "AVX2" and "AVX-512" in found)]


def describe_cpu() -> str:
    """``"AMD EPYC (AVX-512, AVX512_BF16)"``: how reports name the CPU."""
    features = cpu_features()
    return f"{cpu_model()} ({', '.join(features)})" if features else cpu_model()
