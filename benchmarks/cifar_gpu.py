#!/usr/bin/env python
"""Full-scale CIFAR-10 results on one GPU (at most ~9 minutes on an H100), or a CPU smoke run.

GPU run (see cifar_gpu.sh): train VGG11 and VGG16 baselines (bf16 autocast, channels_last, whole data
set on the GPU), compress each with MTD at 1% max drop, fine-tune, evaluate on the test split; the
CP-only / Tucker-only EVBMF baselines run while ``--time-budget`` allows. Latency at batch 1 and 256,
dense vs compressed (fused ops). Writes ``cifar_gpu.json`` and ``cifar_gpu.md`` into ``--out``.

``--smoke``: the same code end to end on the CPU at tiny scale (a few hundred images, width 1/8, one
epoch) — used by tests/test_cifar_smoke.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _experiment as ex  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=".data/cifar10-jpeg.tar.gz")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    p.add_argument("--models", default="vgg11,vgg16")
    p.add_argument("--epochs", default="vgg11=20,vgg16=30", help="baseline epochs per model")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--methods", default="mtd,cp-uniform,tucker-uniform,cp-vbmf,tucker-vbmf")
    p.add_argument("--time-budget", type=float, default=540.0, help="seconds for the whole run")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the same pipeline")
    p.add_argument("--smoke-images", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def subsample(arrays, n_train: int, n_test: int, seed: int):
    """A class-mixed random subset of the data (smoke runs)."""
    from mtd.data import CIFAR10Arrays

    rng = np.random.default_rng(seed)
    tr = np.sort(rng.permutation(len(arrays.train_y))[:n_train])
    te = np.sort(rng.permutation(len(arrays.test_y))[:n_test])
    return CIFAR10Arrays(arrays.train_x[tr], arrays.train_y[tr], arrays.test_x[te], arrays.test_y[te], arrays.classes)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mtd.data import load_cifar10

    t0 = time.perf_counter()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    arrays = load_cifar10(args.data, cache_dir=args.cache_dir, progress=not args.smoke)
    print(f"data: {len(arrays.train_y)} train / {len(arrays.test_y)} test images ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    epochs = dict(kv.split("=") for kv in args.epochs.split(",")) if "=" in args.epochs else {}
    methods = tuple(m for m in args.methods.split(",") if m)
    all_results = {}
    models = [m for m in args.models.split(",") if m]
    for i, model in enumerate(models):
        remaining = args.time_budget - (time.perf_counter() - t0)
        if args.smoke:
            cfg = ex.ExperimentConfig(model=model, width=0.125, train_epochs=1, batch_size=64, methods=methods,
                                   finetune_epochs=1, calib_size=64, holdout_size=64, search_rounds=1, grid="tiny",
                                   cp_n_iter_max=10, latency_batches=(1,), latency_device="cpu", seed=args.seed)
            data = subsample(arrays, args.smoke_images, max(args.smoke_images // 3, 50), args.seed)
        else:
            # leave the later model its share of the remaining time
            share = remaining / (len(models) - i) if i < len(models) - 1 else remaining
            cfg = ex.ExperimentConfig(model=model, width=1.0, train_epochs=int(epochs.get(model, 20)),
                                   train_lr=args.lr, batch_size=args.batch_size, methods=methods,
                                   finetune_epochs=args.finetune_epochs, calib_size=2048, holdout_size=5000,
                                   search_rounds=2, grid="coarse", cp_n_iter_max=30, latency_batches=(1, 256),
                                   latency_device="same", seed=args.seed,
                                   time_budget_s=share)
            data = arrays
        print(f"== {model} ({'smoke' if args.smoke else device})", flush=True)
        all_results[model] = ex.run_experiment(data, cfg, device, progress=not args.smoke)
    stem = "cifar_smoke" if args.smoke else "cifar_gpu"
    merged = {"models": all_results, "wall_seconds": time.perf_counter() - t0}
    from mtd.utils import atomic_write

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / f"{stem}.json", "w") as f:
        json.dump(merged, f, indent=2, default=str)
    with atomic_write(out / f"{stem}.md", "w") as f:
        for model, res in all_results.items():
            f.write(ex.results_markdown(res, f"CIFAR-10 {model} ({'CPU smoke run' if args.smoke else 'GPU'})") + "\n")
    print(f"wrote {out / (stem + '.json')} and .md ({merged['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
