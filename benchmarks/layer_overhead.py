"""Fixed cost per layer of a prepared (rank-space) model on the CPU, batch 1: what a layer costs beyond its arithmetic.

A chain of L identical tiny CP3 layers (R=8 -> T=16 -> R=8 on a 4x4 map: ~40 thousand multiply-adds each) is
prepared (``mtd.prepare_inference``) and timed at two lengths; the slope, (t(L2) - t(L1)) / (L2 - L1), is the
cost of one more layer, almost all of it fixed cost. Each path of the regrouped run is forced in turn
(``MTD_RANK_SPACE``), interleaved in one process:

  layers   one fused op per layer (a Python module call and a dispatcher call each)
  bridge   one torch.ops.mtd.rank_bridge call per layer (factors re-laid out and packed, or handed to BLAS, per call)
  run      the whole run as one torch.ops.mtd.rank_run call on factors packed once

Writes benchmarks/results/layer_overhead.{json,md} (the CPU and its flags named).

    python benchmarks/layer_overhead.py            # ~1 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_util as bu  # noqa: E402

import mtd  # noqa: E402
from mtd.layers import CPConv2d  # noqa: E402
from mtd.report.latency import interleaved_ms  # noqa: E402
from mtd.utils import atomic_write  # noqa: E402

PATHS = ("layers", "bridge", "run")


def chain(layers: int, channels: int = 16, rank: int = 8) -> nn.Module:
    """``layers`` CP3 3x3 convs (channels -> channels at ``rank``), each followed by ReLU, prepared."""
    torch.manual_seed(0)
    mods = []
    for _ in range(layers):
        layer = CPConv2d(channels, channels, (3, 3), rank, padding=1)
        for f in (layer.first, layer.depthwise, layer.last):  # unit-variance activations: no denormals
            nn.init.normal_(f.weight, std=(1.0 / f.weight[0].numel()) ** 0.5)
        mods += [layer, nn.ReLU()]
    return mtd.prepare_inference(nn.Sequential(*mods).eval())


def timed(x: torch.Tensor, models: dict, rounds: int, calls: int) -> dict:
    """{(path, layers): ms} interleaved over every path and length."""
    fns = {}
    for n_layers, model in models.items():
        for path in PATHS:
            def fn(model=model, path=path):
                os.environ["MTD_RANK_SPACE"] = path
                return model(x)
            fns[(path, n_layers)] = fn
    with torch.no_grad():
        return interleaved_ms(fns, rounds, calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs=2, default=[4, 20])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "layer_overhead"))
    args = ap.parse_args()
    if not mtd.kernels.extension_available():
        sys.exit(f"mtd_kernels._C is not built ({mtd.kernels.extension_error()})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    x = torch.randn(1, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    l1, l2 = args.lengths
    ms = timed(x, {l1: chain(l1), l2: chain(l2)}, args.rounds, args.calls)
    rows = [{"path": p, f"ms_{l1}_layers": round(ms[(p, l1)], 4), f"ms_{l2}_layers": round(ms[(p, l2)], 4),
             "us_per_layer": round((ms[(p, l2)] - ms[(p, l1)]) * 1e3 / (l2 - l1), 2)} for p in PATHS]
    machine = bu.machine_info()
    result = {"machine": machine, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "batch": 1, "layer": "CP3 3x3, 16 -> rank 8 -> 16 channels, 4x4 map, ReLU", "rows": rows}
    lines = [f"# Fixed cost per layer, batch 1 ({machine['cpu']}, {', '.join(machine['cpu_features'])}, "
             f"{torch.get_num_threads()} threads)", "",
             f"A prepared chain of tiny CP3 layers ({result['layer']}) timed at {l1} and {l2} layers "
             f"(median of {args.rounds} interleaved rounds of {args.calls} calls); the slope is the cost of one "
             "more layer.", "",
             f"| path | {l1} layers (ms) | {l2} layers (ms) | per layer (us) |", "|---|---|---|---|"]
    lines += [f"| {r['path']} | {r[f'ms_{l1}_layers']:.3f} | {r[f'ms_{l2}_layers']:.3f} | {r['us_per_layer']:.1f} |"
              for r in rows]
    print("\n".join(lines))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with atomic_write(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with atomic_write(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n\nCommand: `python benchmarks/layer_overhead.py`.\n")


if __name__ == "__main__":
    main()
