"""Small helpers shared by the benchmarks: machine description, timing, geometric means, output files."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
from typing import Callable, Dict, Iterable, List, Sequence

import torch
import torch.utils.benchmark as tbench


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, object]:
    """What every result row records about where it was measured."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def time_ms(fn: Callable[[], object], min_run_time: float, stat: str = "median") -> float:
    """Wall time of ``fn()`` in milliseconds (torch.utils.benchmark, blocked autorange).

    ``stat="median"`` is the median over the timed blocks; ``"min"`` the fastest block, which is
    the more stable figure on a machine shared with other busy processes.
    """
    fn()  # warm-up (first-call allocations, oneDNN primitive creation)
    m = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time
    )
    return (m.median if stat == "median" else min(m.times)) * 1e3


def geomean(values: Iterable[float]) -> float:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def write_rows(rows: Sequence[Dict[str, object]], summary: List[Dict[str, object]], out_prefix: str) -> None:
    """Write ``<out_prefix>.csv`` (one row per measurement) and ``<out_prefix>.json`` (rows + summary)."""
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    with open(out_prefix + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    with open(out_prefix + ".json", "w") as f:
        json.dump({"machine": machine_info(), "rows": list(rows), "geomeans": summary}, f, indent=1)
