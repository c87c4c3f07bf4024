"""Decomposition speed and error: the in-house engine ("mtd") against tensorly 0.10 ("tensorly").

For VGG16-like 3x3 kernels (64x64, 256x256, 512x512) and two ranks (the CP3 / CP4 / Tucker-2 ranks
that keep 1/8 and 1/4 of the layer's parameters), times ``cp_decompose_conv``,
``cp4_decompose_conv`` and ``tucker2_decompose_conv`` with both engines for the same fixed number
of sweeps (``tol=0``; 10 / 5 / 2 sweeps for 64 / 256 / 512 channels so that the run fits ~5 min:
tensorly's CP4 needs ~11 s a sweep at 512x512 rank 286 here), and reports seconds, seconds per
sweep (including the init) and the relative error both reach.  Two weights per shape: i.i.d. Gaussian ("random"),
and one whose channel modes have a power-law spectrum ("decaying", closer to trained weights).

A second table ("exact rank") decomposes kernels of exact CP rank (random Gaussian factors,
awkward shapes, 8 seeds) at that rank with the planner's default settings (100 sweeps, tol 1e-6)
and reports the worst relative error, how many stay above 1e-3, and the time, for both engines.

Prints the tables; writes benchmarks/results/bench_decompose.{json,md} (machine, BLAS threads, load).

    python benchmarks/bench_decompose.py            # ~5 min on the 2-core dev machine
    python benchmarks/bench_decompose.py --quick    # 64x64 and 256x256, 3 sweeps
    python benchmarks/bench_decompose.py --shapes 512 --iters 10   # longer (tensorly CP4: minutes)

OpenBLAS threads default to 1 (override with OPENBLAS_NUM_THREADS): on the shared 2-core machine a
2-thread OpenBLAS made a 64x576 SVD take 1.3 s instead of 7 ms (threads spinning against other
processes), which swamps any comparison of the algorithms.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported (see the docstring)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, List, Tuple  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_util as bu  # noqa: E402

from mtd.decompose import ENGINES, cp4_decompose_conv, cp_decompose_conv, tucker2_decompose_conv  # noqa: E402
from mtd.utils.atomic import atomic_write  # noqa: E402

K = 3
KEEPS = (1 / 8, 1 / 4)  # fraction of the dense layer's parameters the decomposition keeps
SWEEPS = {64: 10, 256: 5, 512: 2}  # S = T (VGG16's 3x3 convs) -> sweeps for both engines
QUICK_SHAPES = (64, 256)
QUICK_SWEEPS = 3
# (T, S, kh, kw, rank): the rank fits two modes of the (T, S, kh*kw) view (the GEVD start applies),
# except the last, whose rank exceeds T, S and kh*kw (SVD start, plain ALS)
EXACT_RANK_CASES = ((16, 32, 3, 1, 4), (16, 16, 5, 1, 6), (24, 20, 3, 1, 5), (64, 32, 3, 3, 12), (8, 8, 3, 3, 10))
EXACT_RANK_SEEDS = 8


def cp_rank(t: int, s: int, keep: float, kind: str) -> int:
    """CP rank with R * (S + T + kernel part) = keep * T*S*k*k (kernel part k*k for CP3, 2k for CP4)."""
    per_rank = s + t + (K * K if kind == "cp3" else 2 * K)
    return max(1, int(keep * t * s * K * K / per_rank))


def tucker_rank(t: int, s: int, keep: float) -> int:
    """Equal Tucker-2 ranks r with r*S + r*r*k*k + r*T = keep * T*S*k*k (positive root)."""
    a, b, c = K * K, s + t, -keep * t * s * K * K
    return max(1, min(s, t, int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))))


def make_weight(kind: str, t: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """(T, S, k, k) float64: i.i.d. Gaussian, or Gaussian with both channel modes multiplied by a random
    orthogonal basis with singular values i^-0.8 (a flat random tensor has no low-rank structure at all)."""
    w = rng.standard_normal((t, s, K, K))
    if kind == "random":
        return w
    for mode, n in ((0, t), (1, s)):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        mix = (q * np.arange(1, n + 1) ** -0.8) @ q.T  # (n, n), spectrum i^-0.8
        w = np.moveaxis(np.tensordot(mix, w, axes=([1], [mode])), 0, mode)
    return w / np.linalg.norm(w) * math.sqrt(w.size)


def run_one(method: str, engine: str, w: np.ndarray, rank, iters: int) -> Tuple[float, float, int]:
    """(seconds, rel_error, sweeps) of one decomposition with a fixed number of sweeps."""
    calls: Dict[str, Callable] = {
        "cp3": lambda: cp_decompose_conv(w, rank, n_iter_max=iters, tol=0.0, engine=engine),
        "cp4": lambda: cp4_decompose_conv(w, rank, n_iter_max=iters, tol=0.0, engine=engine),
        "tucker2": lambda: tucker2_decompose_conv(w, rank, n_iter_max=iters, tol=0.0, engine=engine),
    }
    start = time.perf_counter()
    f = calls[method]()
    seconds = time.perf_counter() - start
    return seconds, float(f.rel_error), int(getattr(f, "n_iter", iters))


def exact_rank_kernel(method: str, shape: Tuple[int, int, int, int], rank: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(T, S, kh, kw) kernel of exact CP3 (kernel factor (kh*kw, R)) or CP4 rank, Gaussian factors."""
    t, s, kh, kw = shape
    if method == "cp3":
        a, b, c = (rng.standard_normal((n, rank)) for n in (t, s, kh * kw))
        return np.einsum("tr,sr,kr->tsk", a, b, c).reshape(shape)
    return np.einsum("tr,sr,ir,jr->tsij", *(rng.standard_normal((n, rank)) for n in shape))


def exact_rank_rows() -> List[dict]:
    """Worst error, failures (> 1e-3) and seconds over the seeds, per case, method and engine."""
    rows = []
    for *shape, rank in EXACT_RANK_CASES:
        for method, decompose in (("cp3", cp_decompose_conv), ("cp4", cp4_decompose_conv)):
            weights = [exact_rank_kernel(method, tuple(shape), rank, np.random.default_rng(seed))
                       for seed in range(EXACT_RANK_SEEDS)]
            for engine in ENGINES:
                start = time.perf_counter()
                errors = [decompose(w, rank, engine=engine).rel_error for w in weights]
                rows.append({"shape": "x".join(map(str, shape)), "method": method, "rank": rank, "engine": engine,
                             "seeds": len(weights), "max_rel_error": max(errors),
                             "above_1e-3": sum(e > 1e-3 for e in errors), "seconds": time.perf_counter() - start})
    return rows


def exact_rank_table(rows: List[dict]) -> List[str]:
    lines = ["| T x S x kh x kw | method | rank | engine | seeds | worst rel_err | above 1e-3 | s (all seeds) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['shape']} | {r['method']} | {r['rank']} | {r['engine']} | {r['seeds']} "
              f"| {r['max_rel_error']:.1e} | {r['above_1e-3']} | {r['seconds']:.2f} |" for r in rows]
    return lines


def table(rows: List[dict]) -> List[str]:
    """Markdown table, one line per (weight, shape, method, rank), both engines side by side."""
    lines = ["| weight | T x S x 3 x 3 | method | rank | keep | sweeps | mtd s | tensorly s | tensorly / mtd "
             "| mtd rel_err | tensorly rel_err |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keyed: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        keyed.setdefault((r["weight"], r["shape"], r["method"], str(r["rank"]), r["keep"]), {})[r["engine"]] = r
    for (weight, shape, method, rank, keep), by in keyed.items():
        m, t = by.get("mtd"), by.get("tensorly")
        if not (m and t):
            continue
        lines.append(f"| {weight} | {shape} | {method} | {rank} | 1/{round(1 / keep)} | {m['sweeps']} | "
                     f"{m['seconds']:.2f} | "
                     f"{t['seconds']:.2f} | {t['seconds'] / m['seconds']:.1f}x | {m['rel_error']:.4f} | "
                     f"{t['rel_error']:.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64x64 and 256x256 only, 3 sweeps")
    parser.add_argument("--iters", type=int, default=None,
                        help=f"sweeps per decomposition for every shape (default {SWEEPS}, quick {QUICK_SWEEPS})")
    parser.add_argument("--shapes", type=int, nargs="+", default=None, help="channel counts S = T")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "bench_decompose"))
    args = parser.parse_args()
    shapes = args.shapes or (QUICK_SHAPES if args.quick else tuple(SWEEPS))

    def sweeps_for(c: int) -> int:
        return args.iters or (QUICK_SWEEPS if args.quick else SWEEPS.get(c, 2))

    load_before = os.getloadavg()
    rows: List[dict] = []
    t_start = time.perf_counter()
    print(f"{'weight':9s} {'shape':>16s} {'method':8s} {'rank':>10s} {'engine':9s} {'s':>8s} {'rel_err':>8s}")
    for weight_kind in ("random", "decaying"):
        for c in shapes:
            w = make_weight(weight_kind, c, c, np.random.default_rng(c))
            for keep in KEEPS:
                ranks = {"cp3": cp_rank(c, c, keep, "cp3"), "cp4": cp_rank(c, c, keep, "cp4"),
                         "tucker2": (tucker_rank(c, c, keep),) * 2}
                for method, rank in ranks.items():
                    for engine in ENGINES:
                        seconds, err, sweeps = run_one(method, engine, w, rank, sweeps_for(c))
                        row = {"weight": weight_kind, "shape": f"{c}x{c}x{K}x{K}", "method": method,
                               "rank": list(rank) if isinstance(rank, tuple) else rank, "keep": keep,
                               "engine": engine, "seconds": seconds, "seconds_per_sweep": seconds / max(sweeps, 1),
                               "rel_error": err, "sweeps": sweeps,
                               "loadavg_1min_after": os.getloadavg()[0]}
                        rows.append(row)
                        print(f"{weight_kind:9s} {row['shape']:>16s} {method:8s} {str(rank):>10s} {engine:9s} "
                              f"{seconds:8.2f} {err:8.4f}", flush=True)
    total = time.perf_counter() - t_start
    exact_rows = exact_rank_rows()
    ratios = [t["seconds"] / m["seconds"] for m, t in zip(rows[::2], rows[1::2])]
    machine = {**bu.machine_info(), "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
               "numpy": np.__version__, "tensorly": __import__("tensorly").__version__,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    summary = {"sweeps": {c: sweeps_for(c) for c in shapes}, "total_seconds": total,
               "geomean_tensorly_over_mtd_time": bu.geomean(ratios)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_write(args.out + ".json", "w") as f:
        json.dump({"machine": machine, "summary": summary, "rows": rows, "exact_rank_rows": exact_rows}, f, indent=1)
    md = ["# Decomposition engines: mtd vs tensorly (same number of sweeps for both, tol=0)", "",
          f"Machine: {machine['cpu']}, {machine['cores']} cores, OpenBLAS threads {machine['openblas_threads']}, "
          f"numpy {machine['numpy']}, tensorly {machine['tensorly']}; load average before "
          f"{', '.join(f'{v:.1f}' for v in load_before)}, after "
          f"{', '.join(f'{v:.1f}' for v in machine['loadavg_after'])} "
          "(other processes share the cores: times are noisy).", "",
          f"Geomean time tensorly / mtd: {summary['geomean_tensorly_over_mtd_time']:.2f}x; whole run {total:.0f} s.",
          "", *table(rows), "",
          "## Exact rank: kernels of exact CP rank, decomposed at that rank (100 sweeps, tol 1e-6)", "",
          *exact_rank_table(exact_rows), ""]
    with atomic_write(args.out + ".md", "w") as f:
        f.write("\n".join(md))
    print("\n".join(md[4:]))
    print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
