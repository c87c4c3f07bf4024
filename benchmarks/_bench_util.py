"""Small helpers shared by the benchmarks: machine description, timing, geometric means, output files."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import socket
from typing import Any, Callable, Dict, Iterable, List, Sequence

import torch
import torch.utils.benchmark as tbench

from mtd.utils.machine import cpu_features, cpu_model


def avx_level() -> str:
    """The widest x86 vector extension the CPU has ("AVX-512", "AVX2" or "none"): rows name it."""
    return next((f for f in cpu_features() if f in ("AVX-512", "AVX2")), "none")


def kernel_isa() -> str:
    """The instruction set mtd's CPU micro-kernels picked at load time ('avx512', 'avx2', 'baseline'; 'none'
    without the extension): MTD_CPU_ISA can lower it below the CPU's own level."""
    try:
        import mtd_kernels
    except ImportError:
        return "none"
    return mtd_kernels.cpu_isa()


def machine_info() -> Dict[str, object]:
    """What every result row records about where it was measured."""
    return {
        "cpu": cpu_model(),
        "avx": avx_level(),
        "cpu_features": cpu_features(),
        "kernel_isa": kernel_isa(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def machine_description(device: torch.device) -> dict[str, Any]:
    """Host, CPU, thread count and (if used) GPU name, for the results file."""
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_model(), "avx": avx_level(),
            "cpu_features": cpu_features(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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
    """Atomically write ``<out_prefix>.csv`` (one row per measurement) and ``<out_prefix>.json`` (rows + summary)."""
    from mtd.utils import atomic_write

    with atomic_write(out_prefix + ".csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(out_prefix + ".json", "w") as f:
        json.dump({"machine": machine_info(), "rows": list(rows), "geomeans": summary}, f, indent=1)


def write_result_files(results: dict, out, stem: str, markdown: Callable[[dict, str], str],
                       plot: Callable[[dict, object], None]) -> None:
    """Atomically write ``<out>/<stem>.json``, ``.png`` (``plot(results, path)``) and ``.md``."""
    from pathlib import Path

    from mtd.utils import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / f"{stem}.json", "w") as f:
        json.dump(results, f, indent=1)
    plot(results, out / f"{stem}.png")
    with atomic_write(out / f"{stem}.md", "w") as f:
        f.write(markdown(results, stem))


def save_figure(fig, path) -> None:
    """Save a matplotlib figure atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt
    from pathlib import Path

    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def search_lines(search: dict, verified_on: str) -> List[str]:
    """Markdown lines for the probes and rounds of an ``mtd.compress`` budget search (``plan.results``)."""
    lines = ["", "Search (probes: short fine-tune, drop on calibration images; rounds: full fine-tune, "
             f"verified on {verified_on}):", ""]
    lines += [f"- probe {p['index']}: {p['ratio']:.2f}x, calibration drop {p['calibration_drop']:+.2f}"
              for p in search["probes"]]
    lines += [f"- round at {r['index']}: {r['ratio']:.2f}x, verified drop {r['drop']:+.2f} (+{r['margin']:.2f}) -> "
              f"{'pass' if r['passed'] else 'fail'}" for r in search["rounds"]]
    return lines


def cifar_arrays(data: str, subset, seed: int):
    """CIFAR-10 as arrays; with ``subset`` only a seeded random ``subset`` of the training images (smoke runs)."""
    import numpy as np

    from mtd.data import CIFAR10Arrays, load_cifar10

    arrays = load_cifar10(data)
    if subset:
        idx = np.sort(np.random.default_rng(seed).permutation(len(arrays.train_y))[:subset])
        arrays = CIFAR10Arrays(arrays.train_x[idx], arrays.train_y[idx], arrays.test_x, arrays.test_y, arrays.classes)
    return arrays


def resumed_results(json_path, args, additive: tuple = ()) -> dict:
    """The results of an earlier run of the same experiment (same arguments), else a fresh dict with them.

    Arguments named in ``additive`` only add steps after the others (an earlier run without them is the same
    experiment so far), so they may differ; the stored arguments are updated to ``args``.
    """
    from pathlib import Path

    path = Path(json_path)
    results = json.loads(path.read_text()) if path.is_file() else {}

    def core(a: dict) -> dict:
        return {k: v for k, v in a.items() if k not in additive}

    if "args" in results and core(results["args"]) != core(vars(args)):  # a resumed run: the same experiment
        print(f"{path} was made with other arguments; starting over")
        results = {}
    results["args"] = vars(args)
    results.setdefault("machine", machine_description(torch.device("cpu")))
    for step in results.setdefault("steps", {}).values():  # rows written before #19 named the MAC ratio flops_ratio
        if isinstance(step, dict) and "flops_ratio" in step:
            step["macs_ratio"] = step.pop("flops_ratio")
    return results
