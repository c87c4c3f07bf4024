#!/usr/bin/env python
"""CIFAR-10 on the CPU (~25-30 min on 2 cores at the defaults): VGG11 width 1/4 baseline, then MTD at
1% max drop and the CP-only / Tucker-only baselines (EVBMF ranks, and uniform ranks at the compression MTD
reached), each fine-tuned for the same epochs.

Results (baseline acc, acc, drop, parameter and FLOPs ratios, CPU latency at batch 1 with the fused ops
vs the dense model) go to ``benchmarks/results/cifar_cpu_<host>.{json,md}``.

Quick smoke run:  python benchmarks/cifar_cpu.py --epochs 1 --finetune-epochs 1 --subset 3000 --grid small
"""
from __future__ import annotations

import argparse
import socket
import sys

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model", default="vgg11")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=15, help="baseline training epochs")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--methods", default="mtd,cp-vbmf,tucker-vbmf,cp-uniform,tucker-uniform",
                   help="the *-uniform baselines compress every conv at --uniform-ratio")
    p.add_argument("--uniform-ratio", type=float, default=None,
                   help="per-layer ratio of the *-uniform baselines (default: the ratio MTD reached in this run)")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--grid", default="full", choices=("full", "small", "coarse"))
    p.add_argument("--subset", type=int, default=None, help="use only this many training images (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mtd.data import CIFAR10Arrays, load_cifar10
    from mtd.report.experiment import ExperimentConfig, run_experiment, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    arrays = load_cifar10(args.data, cache_dir=args.cache_dir)
    tag = ""
    if args.subset:
        idx = np.sort(np.random.default_rng(args.seed).permutation(len(arrays.train_y))[:args.subset])
        arrays = CIFAR10Arrays(arrays.train_x[idx], arrays.train_y[idx], arrays.test_x, arrays.test_y, arrays.classes)
        tag = f"_subset{args.subset}"
    cfg = ExperimentConfig(model=args.model, width=args.width, train_epochs=args.epochs,
                           methods=tuple(m for m in args.methods.split(",") if m), max_drop=args.max_drop,
                           finetune_epochs=args.finetune_epochs, grid=args.grid, latency_batches=(1,),
                           latency_device="cpu", seed=args.seed, uniform_ratio=args.uniform_ratio,
                           holdout_size=min(2000, len(arrays.train_y) // 10), calib_size=1024)
    results = run_experiment(arrays, cfg, torch.device("cpu"))
    host = socket.gethostname().split(".")[0]
    js, md = write_results(results, args.out, f"cifar_cpu_{host}{tag}",
                           f"CIFAR-10 on CPU: {args.model} width {args.width}")
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
