"""Activation-aware vs weight-only decompositions, one layer at a time, on a trained CIFAR VGG.

For each compressible layer of the checkpoint and a few ranks per method (CP3 at 8x / 32x fewer
parameters, Tucker-2 at channel fractions 0.25 / 0.0625, SVD of the classifier at 2x / 4x) it reports
(a) the relative output error ``||(W - W_hat) X|| / ||W X||`` of the layer on the calibration images and
on other (held-out) training images, computed exactly from their input second moments, and (b) the
network's accuracy on test images with that ONE layer replaced, for the weight-only decomposition
(``mtd.decompose``) and its activation-aware twin (``mtd.recovery``, started from the same weight-only
factors, so the difference is what the data adds).  For CP it also reports the output error of the
aware CP started from the whitened kernel (``start='whitened'``, which runs a second ALS).

Both CP twins use the same number of ALS sweeps (``--als-iters``, default 30, below the library's
100 to fit the time budget).  Writes benchmarks/results/bench_aware.{json,md}.

    python benchmarks/studies/bench_aware.py               # ~20-25 min on the shared 2-core dev machine
    python benchmarks/studies/bench_aware.py --layers features.4 --test-images 500   # one layer, quick
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported (see ../bench_decompose.py)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: the shared helpers
sys.path.insert(0, BENCHMARKS)
import _bench_util as bu  # noqa: E402

import mtd  # noqa: E402
from mtd.data import TensorDataLoader  # noqa: E402
from mtd.decompose import cp_decompose_conv, svd_decompose, tucker2_decompose_conv  # noqa: E402
from mtd.layers import compressible_layers  # noqa: E402
from mtd.models import load_model  # noqa: E402
from mtd.planner.baselines import uniform_cp_rank, uniform_svd_rank  # noqa: E402
from mtd.planner.layer_factory import build_layer  # noqa: E402
from mtd.recovery import aware_cp, aware_svd, aware_tucker2, collect_input_stats, output_error  # noqa: E402
from mtd.utils import atomic_write  # noqa: E402

BATCH = 200


def avx_level() -> str:
    """The widest AVX extension the CPU flags list (from /proc/cpuinfo)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return name
    return "none"


def loader(data, idx, train: bool) -> TensorDataLoader:
    x, y = (data.train_x, data.train_y) if train else (data.test_x, data.test_y)
    return TensorDataLoader(x[idx], y[idx], BATCH, train=False)


class OneLayerSwap:
    """Test accuracy with one layer replaced, re-running only the layers after it: the inputs of the
    layer are computed once per layer (VGG layout: ``features`` Sequential, then ``classifier``)."""

    def __init__(self, model: nn.Module, batches):
        self.model, self.batches = model, list(batches)

    @torch.no_grad()
    def inputs_of(self, name: str):
        feats = self.model.features
        stop = len(feats) if name == "classifier" else int(name.split(".")[1])
        out = []
        for x, y in self.batches:
            h = feats[:stop](x)
            out.append((torch.flatten(h, 1) if name == "classifier" else h, y))
        return out

    @torch.no_grad()
    def accuracy(self, name: str, layer: nn.Module, inputs) -> float:
        feats = self.model.features
        correct = total = 0
        for h, y in inputs:
            if name == "classifier":
                logits = layer(h)
            else:
                rest = feats[int(name.split(".")[1]) + 1:]
                logits = self.model.classifier(torch.flatten(rest(layer(h)), 1))
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
        return 100.0 * correct / total


def dense_of(layer: nn.Module) -> torch.Tensor:
    """The decomposed layer's weight as a dense (T, S, kh, kw) kernel or (out, in) matrix."""
    weight = layer.dense_weight() if hasattr(layer, "dense_weight") else layer.to_dense().weight
    return weight.detach().double()


def candidates(module: nn.Module, args):
    """(method, label, ranks) to try for one layer."""
    if isinstance(module, nn.Linear):
        return [("svd", f"{r}x", uniform_svd_rank(*module.weight.shape, r)) for r in args.svd_ratios]
    t, s, kh, kw = module.weight.shape
    out = [("cp", f"{r}x", uniform_cp_rank(t, s, kh, kw, r)) for r in args.cp_ratios]
    out += [("tucker", f"f{f:g}", (max(1, round(f * s)), max(1, round(f * t)))) for f in args.tucker_fractions]
    return out


def decompose_pair(method: str, weight: torch.Tensor, ranks, stats, args):
    """(weight-only factors, aware factors, extra dict, seconds weight-only, seconds aware on top)."""
    extra = {}
    t0 = time.perf_counter()
    if method == "svd":
        base = svd_decompose(weight, ranks)
        t1 = time.perf_counter()
        return base, aware_svd(weight, stats, ranks), extra, t1 - t0, time.perf_counter() - t1
    if method == "cp":
        base = cp_decompose_conv(weight, ranks, n_iter_max=args.als_iters)
        t1 = time.perf_counter()
        aware = aware_cp(weight, stats, ranks, start=base)
        t2 = time.perf_counter()
        if not args.skip_whitened:
            whitened = aware_cp(weight, stats, ranks, start="whitened", n_iter_max=args.als_iters)
            extra["whitened_factors"] = whitened
            extra["whitened_s"] = time.perf_counter() - t2
        return base, aware, extra, t1 - t0, t2 - t1
    base = tucker2_decompose_conv(weight, ranks)
    t1 = time.perf_counter()
    return base, aware_tucker2(weight, stats, ranks, start=base), extra, t1 - t0, time.perf_counter() - t1


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = mtd.load_cifar10(args.data, progress=False)
    model = load_model(args.checkpoint).eval()
    order = np.random.default_rng(args.seed).permutation(len(data.train_y))
    calib_idx = np.sort(order[:args.calib_images])
    held_idx = np.sort(order[args.calib_images:args.calib_images + args.held_images])
    test_idx = np.sort(np.random.default_rng(args.seed).permutation(len(data.test_y))[:args.test_images])
    names = args.layers or [n for n, _ in compressible_layers(model)]
    t = time.perf_counter()
    calib = collect_input_stats(model, loader(data, calib_idx, True), names)
    held = collect_input_stats(model, loader(data, held_idx, True), names)
    stats_s = time.perf_counter() - t
    swap = OneLayerSwap(model, loader(data, test_idx, False))
    dense_acc = swap.accuracy("classifier", model.classifier, swap.inputs_of("classifier"))
    rows = []
    for name in names:
        module = model.get_submodule(name)
        weight = module.weight.detach().double()
        inputs = swap.inputs_of(name)
        for method, label, ranks in candidates(module, args):
            base, aware, extra, base_s, aware_s = decompose_pair(method, weight, ranks, calib[name], args)
            row = {"layer": name, "shape": list(weight.shape), "method": method, "target": label,
                   "ranks": list(np.atleast_1d(ranks).tolist()), "base_s": round(base_s, 2),
                   "aware_extra_s": round(aware_s, 2)}
            for tag, factors in (("base", base), ("aware", aware)):
                layer = build_layer(module, method, factors, backend="torch")
                w_hat = dense_of(layer)
                row[f"{tag}_weight_err"] = float(factors.rel_error)
                row[f"{tag}_calib_err"] = output_error(weight, w_hat, calib[name])
                row[f"{tag}_held_err"] = output_error(weight, w_hat, held[name])
                row[f"{tag}_test_acc"] = swap.accuracy(name, layer, inputs)
            if "whitened_factors" in extra:
                w_hat = dense_of(build_layer(module, method, extra["whitened_factors"], backend="torch"))
                row["whitened_held_err"] = output_error(weight, w_hat, held[name])
                row["whitened_s"] = round(extra["whitened_s"], 2)
            rows.append(row)
            print(f"{name} {method} {label} {row['ranks']}: held err {row['base_held_err']:.4f} -> "
                  f"{row['aware_held_err']:.4f}, acc {row['base_test_acc']:.2f} -> {row['aware_test_acc']:.2f}"
                  + (f", whitened start {row['whitened_held_err']:.4f}" if "whitened_held_err" in row else ""),
                  flush=True)
    machine = dict(bu.machine_info(), avx=avx_level())
    return {"machine": machine, "checkpoint": str(args.checkpoint), "calib_images": len(calib_idx),
            "held_images": len(held_idx), "test_images": len(test_idx), "als_iters": args.als_iters,
            "dense_test_acc": dense_acc, "stats_s": round(stats_s, 1),
            "wall_s": round(time.perf_counter() - started, 1), "rows": rows}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Activation-aware vs weight-only decomposition, one layer at a time",
        "",
        f"`{res['checkpoint']}`; statistics from {res['calib_images']} training images, output error also on "
        f"{res['held_images']} other training images (held), accuracy on {res['test_images']} test images with "
        f"only that layer replaced (dense: {res['dense_test_acc']:.2f}%).  CP-ALS {res['als_iters']} sweeps for "
        "both twins; the aware CP / Tucker start from the weight-only factors (time: on top of them).",
        f"Machine: {m['cpu']} ({m['avx']}), {m['threads']} torch thread(s), torch {m['torch']}; input statistics "
        f"{res['stats_s']} s, wall {res['wall_s']} s.",
        "",
        "| layer | shape | method | target | ranks | out err calib (w / aware) | out err held (w / aware) "
        "| CP whitened-start held | test acc % (w / aware) | weight err (w / aware) | s (w / aware extra) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        white = f"{r['whitened_held_err']:.4f}" if "whitened_held_err" in r else ""
        lines.append(
            f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {r['method']} | {r['target']} | {r['ranks']} "
            f"| {r['base_calib_err']:.4f} / {r['aware_calib_err']:.4f} | {r['base_held_err']:.4f} / "
            f"{r['aware_held_err']:.4f} | {white} | {r['base_test_acc']:.2f} / {r['aware_test_acc']:.2f} "
            f"| {r['base_weight_err']:.3f} / {r['aware_weight_err']:.3f} | {r['base_s']} / {r['aware_extra_s']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="/work/shared/models/vgg11-w1-cifar10.pt")
    p.add_argument("--data", default="/work/shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--layers", nargs="*", help="layer names (default: every compressible layer)")
    p.add_argument("--calib-images", type=int, default=1024)
    p.add_argument("--held-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--cp-ratios", type=float, nargs="*", default=[8, 32])
    p.add_argument("--tucker-fractions", type=float, nargs="*", default=[0.25, 0.0625])
    p.add_argument("--svd-ratios", type=float, nargs="*", default=[2, 4])
    p.add_argument("--als-iters", type=int, default=30)
    p.add_argument("--skip-whitened", action="store_true", help="skip the CP whitened-start variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(BENCHMARKS, "results"))
    args = p.parse_args(argv)
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "bench_aware.json", "w") as f:
        json.dump(res, f, indent=1)
    with atomic_write(out / "bench_aware.md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
