"""CPU microbenchmark of the fused mtd ops on every conv layer of CIFAR VGG16.

For each layer and batch size, with the CP3 rank / Tucker-2 ranks that keep 1/8 of the layer's
parameters (the planner's uniform rank rules, random factors), times under torch.inference_mode():
  dense conv, the unfused PyTorch chain (NCHW and channels_last), the fused kernel (NCHW and
  channels_last, MTD_CPU_PATH=fused) and the op as it runs by default (channels_last, the per-shape
  measured choice between the fused kernel and the chain).
Speedups are against the best unfused chain of the same run. Prints a table and geometric means per
(method, batch) and writes benchmarks/results/cpu_layers.{csv,json}.

    python benchmarks/cpu_layers.py                       # full run
    python benchmarks/cpu_layers.py --quick --batches 1 --layers 0 5 12
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_util as bu  # noqa: E402

import mtd_kernels  # noqa: E402
from mtd.planner.baselines import uniform_cp_rank, uniform_tucker_ranks  # noqa: E402

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
COMPRESSION = 8  # the decomposition keeps 1/COMPRESSION of the dense layer's parameters
K = 3


def vgg16_convs(image: int = 32) -> List[Tuple[int, int, int]]:
    """(S, T, spatial size) of each 3x3 conv of CIFAR VGG16."""
    convs, s, size = [], 3, image
    for v in VGG16_CFG:
        if v == "M":
            size //= 2
        else:
            convs.append((s, int(v), size))
            s = int(v)
    return convs


def cp_rank(s: int, t: int, k: int = K, cp4: bool = False) -> int:
    """The planner's uniform CP rule at 1/COMPRESSION of the layer's parameters."""
    return uniform_cp_rank(t, s, k, k, COMPRESSION, cp4=cp4)


def tucker_ranks(s: int, t: int, k: int = K) -> Tuple[int, int]:
    """The planner's uniform Tucker-2 rule at 1/COMPRESSION of the layer's parameters."""
    return uniform_tucker_ranks(t, s, k, k, COMPRESSION)


def make_factors(method: str, s: int, t: int) -> Tuple[tuple, str]:
    g = torch.Generator().manual_seed(s * 1000 + t)
    rnd = lambda *shape: torch.randn(*shape, generator=g) / math.sqrt(shape[1] * shape[2] * shape[3])  # noqa: E731
    if method == "cp":
        r = cp_rank(s, t)
        return (rnd(r, s, 1, 1), rnd(r, 1, K, K), rnd(t, r, 1, 1)), f"R={r}"
    if method == "cp4":
        r = cp_rank(s, t, cp4=True)
        return (rnd(r, s, 1, 1), rnd(r, 1, K, 1), rnd(r, 1, 1, K), rnd(t, r, 1, 1)), f"R={r}"
    r1, r2 = tucker_ranks(s, t)
    return (rnd(r1, s, 1, 1), rnd(r2, r1, K, K), rnd(t, r2, 1, 1)), f"R1={r1},R2={r2}"


def chain(method: str, x, factors, bias):
    """The unfused PyTorch chain of a compressed layer (+bias, ReLU) — what the fused op replaces."""
    if method == "cp4":
        wf, wv, wh, wl = factors
        y = F.conv2d(x, wf)
        y = F.conv2d(y, wv, padding=(1, 0), groups=wv.shape[0])
        y = F.conv2d(y, wh, padding=(0, 1), groups=wh.shape[0])
        return F.relu(F.conv2d(y, wl, bias))
    wf, wm, wl = factors
    y = F.conv2d(x, wf)
    y = F.conv2d(y, wm, padding=1, groups=wm.shape[0] if method == "cp" else 1)
    return F.relu(F.conv2d(y, wl, bias))


@contextlib.contextmanager
def forced_cpu_path(path: str) -> Iterator[None]:
    """Run the ops with ``MTD_CPU_PATH=path`` (fused kernel, chain, or the measured choice)."""
    old = os.environ.get("MTD_CPU_PATH")
    os.environ["MTD_CPU_PATH"] = path
    try:
        yield
    finally:
        if old is None:
            del os.environ["MTD_CPU_PATH"]
        else:
            os.environ["MTD_CPU_PATH"] = old


FUSED = {"cp": mtd_kernels.cp_conv2d, "cp4": mtd_kernels.cp4_conv2d, "tucker": mtd_kernels.tucker_conv2d}


def bench_layer(idx: int, s: int, t: int, size: int, batch: int, methods: List[str], min_time: float,
                stat: str) -> List[Dict]:
    torch.manual_seed(idx)
    x = torch.randn(batch, s, size, size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    dense_w = torch.randn(t, s, K, K) / math.sqrt(s * K * K)
    bias = torch.randn(t)
    dense_w_cl = dense_w.contiguous(memory_format=torch.channels_last)
    dense = {
        "dense_nchw": bu.time_ms(lambda: F.relu(F.conv2d(x, dense_w, bias, padding=1)), min_time, stat),
        "dense_cl": bu.time_ms(lambda: F.relu(F.conv2d(x_cl, dense_w_cl, bias, padding=1)), min_time, stat),
    }
    rows = []
    for method in methods:
        factors, ranks = make_factors(method, s, t)
        factors_cl = tuple(f.contiguous(memory_format=torch.channels_last) for f in factors)
        fused = FUSED[method]
        with forced_cpu_path("fused"):
            err = (fused(x, *factors, bias, 1, 1, 1, True) - chain(method, x, factors, bias)).abs().max().item()
        times = {
            "chain_nchw": bu.time_ms(lambda: chain(method, x, factors, bias), min_time, stat),
            "chain_cl": bu.time_ms(lambda: chain(method, x_cl, factors_cl, bias), min_time, stat),
        }
        with forced_cpu_path("fused"):  # the fused kernel itself
            times["fused_nchw"] = bu.time_ms(lambda: fused(x, *factors, bias, 1, 1, 1, True), min_time, stat)
            times["fused_cl"] = bu.time_ms(lambda: fused(x_cl, *factors, bias, 1, 1, 1, True), min_time, stat)
        with forced_cpu_path("auto"):  # what the op runs by default: the path it measured faster
            times["op_cl"] = bu.time_ms(lambda: fused(x_cl, *factors, bias, 1, 1, 1, True), min_time, stat)
        best_chain = min(times["chain_nchw"], times["chain_cl"])
        rows.append({
            **bu.machine_info(), "layer": idx, "S": s, "T": t, "HW": size, "batch": batch, "method": method,
            "ranks": ranks, "stat": stat, **{k: round(v, 4) for k, v in {**dense, **times}.items()},
            "speedup_nchw": round(best_chain / times["fused_nchw"], 3),
            "speedup_cl": round(best_chain / times["fused_cl"], 3),
            "speedup_best": round(best_chain / min(times["fused_nchw"], times["fused_cl"]), 3),
            "speedup_op_cl": round(best_chain / times["op_cl"], 3),
            "vs_dense": round(min(dense.values()) / min(times["fused_nchw"], times["fused_cl"]), 3),
            "max_abs_err": float(f"{err:.3g}"),
        })
    return rows


def print_row(r: Dict) -> None:
    print(f"{r['layer']:>3} {r['S']:>4}->{r['T']:<4} {r['HW']:>3} {r['batch']:>3} {r['method']:<7}{r['ranks']:<15}"
          f"{r['dense_nchw']:>9.3f}{r['chain_nchw']:>9.3f}{r['chain_cl']:>9.3f}{r['fused_nchw']:>9.3f}"
          f"{r['fused_cl']:>9.3f}{r['speedup_nchw']:>7.2f}{r['speedup_cl']:>7.2f}", flush=True)


def summarise(rows: List[Dict]) -> List[Dict]:
    out = []
    for method in sorted({r["method"] for r in rows}):
        for batch in sorted({r["batch"] for r in rows}):
            sel = [r for r in rows if r["method"] == method and r["batch"] == batch]
            if sel:
                out.append({"method": method, "batch": batch, "layers": len(sel),
                            **{k: round(bu.geomean(r[k] for r in sel), 3)
                               for k in ("speedup_nchw", "speedup_cl", "speedup_best", "speedup_op_cl",
                                         "vs_dense")}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="conv indices 0..12 (default all)")
    ap.add_argument("--methods", nargs="+", default=["cp", "tucker"], choices=sorted(FUSED))
    ap.add_argument("--quick", action="store_true", help="short timing runs (noisier)")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="time per call: median of the timed blocks, or the fastest block (busy machines)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu_layers"),
                    help="output prefix; writes <out>.csv and <out>.json")
    args = ap.parse_args()
    if not mtd_kernels.extension_available():
        sys.exit(f"mtd_kernels._C is not built ({mtd_kernels.extension_error()}); nothing fused to measure")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    convs = vgg16_convs()
    layers = args.layers if args.layers is not None else list(range(len(convs)))
    min_time = 0.05 if args.quick else 0.3
    print(f"machine: {bu.machine_info()}  time per call: {args.stat}")
    print(f"{'#':>3} {'S->T':<9} {'HW':>3} {'N':>3} {'method':<7}{'ranks':<15}{'dense':>9}{'chainNC':>9}"
          f"{'chainCL':>9}{'fusedNC':>9}{'fusedCL':>9}{'xNC':>7}{'xCL':>7}   (ms; x = vs best chain)")
    rows: List[Dict] = []
    with torch.inference_mode():
        for batch in args.batches:
            for idx in layers:
                s, t, size = convs[idx]
                for r in bench_layer(idx, s, t, size, batch, args.methods, min_time, args.stat):
                    print_row(r)
                    rows.append(r)
    summary = summarise(rows)
    print("\ngeomean speedup of the fused op vs the best unfused chain (and best fused vs best dense):")
    for sm in summary:
        print(f"  {sm['method']:<7} batch {sm['batch']:>3}: NCHW {sm['speedup_nchw']:.2f}x  "
              f"channels_last {sm['speedup_cl']:.2f}x  best {sm['speedup_best']:.2f}x  "
              f"op (auto path, CL) {sm['speedup_op_cl']:.2f}x  vs dense {sm['vs_dense']:.2f}x")
    bu.write_rows(rows, summary, args.out)
    print(f"wrote {args.out}.csv and {args.out}.json")


if __name__ == "__main__":
    main()
