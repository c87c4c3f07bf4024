#!/usr/bin/env python
"""What decomposition costs before fine-tuning, and what recovery gets back: full-width VGG11, a fixed 35x plan.

The plan is the 35x MTD plan of ``benchmarks/results/cifar_cpu_full.json`` (step ``mtd@32``: CP on the 64- and
128-channel convs, Tucker-2 on the 512-channel ones, first conv and classifier dense), rebuilt from its
methods and ranks. Each variant decomposes the baseline, applies its recovery, re-estimates BatchNorm and is
scored on ``--test`` seeded test images; then it is fine-tuned ``--epochs`` distilled epochs with
``mtd.train.finetune`` (the library's defaults unless ``--lr`` is given) and scored again. Steps are written to
``<out>/recovery_vgg11.{json,md}`` after each one; a restarted run skips finished steps.

Variants (``--variants``, comma-separated):
  weights          factors from the weights alone (``from_conv``), the issue's 74.53% / 79.60% row;
  recon            + sequential local reconstruction (``mtd.recovery.reconstruct``, default config);
  aware            activation-aware factors (``mtd.recovery.aware`` via the method table, from input
                   statistics of the reconstruction images), no reconstruction;
  aware-recon      activation-aware factors, then reconstruction: what ``mtd.compress`` does by default;
  recon-nobn       the same without re-estimating BatchNorm afterwards;
  recon-lrX        recon, fine-tuned at peak learning rate X instead of the default.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers
import _bench_util as bu  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="../shared/models/vgg11-w1-cifar10.pt")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--plan-from", default="benchmarks/results/cifar_cpu_full.json")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--stem", default="recovery_vgg11")
    p.add_argument("--test", type=int, default=3000, help="seeded test images scored")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--variants", default="weights,recon")
    p.add_argument("--recon-images", type=int, default=None)
    p.add_argument("--recon-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mtd.models import load_model
    from mtd.data.adapter import as_planning_data
    from mtd.train.teacher_cache import CachedTeacher

    torch.manual_seed(args.seed)
    arrays = bu.cifar_arrays(args.data, None, args.seed)
    test_idx = np.sort(np.random.default_rng(args.seed).permutation(len(arrays.test_y))[:args.test])
    data = as_planning_data(arrays)
    test = as_planning_data((arrays.test_x[test_idx], arrays.test_y[test_idx]),
                            mean=data.mean, std=data.std).batches(np.arange(len(test_idx)), 500, torch.device("cpu"))
    order = np.random.default_rng(args.seed).permutation(len(data))
    calib_idx, tune_idx = np.sort(order[:1024]), np.sort(order[1024:])
    calib = data.batches(calib_idx, 256, torch.device("cpu"))
    baseline = load_model(args.checkpoint).eval()
    teacher = CachedTeacher(baseline)
    plan = json.loads(Path(args.plan_from).read_text())["steps"]["mtd@32"]["layers"]

    json_path = Path(args.out) / f"{args.stem}.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results.update(args=vars(args), machine=bu.machine_info(),
                   plan=[{k: l[k] for k in ("name", "method", "ranks")} for l in plan])
    steps = results.setdefault("steps", {})
    if "baseline" not in steps:
        steps["baseline"] = {"test_accuracy": _accuracy(baseline, test)}
    print(f"baseline {steps['baseline']['test_accuracy']:.2f}% on {len(test_idx)} test images", flush=True)

    for variant in [v for v in args.variants.split(",") if v]:
        if variant in steps:
            continue
        t0 = time.perf_counter()
        model, info = _build(baseline, plan, variant, data, tune_idx, args)
        info["before_finetune"] = _accuracy(model, test)
        print(f"{variant}: {info['before_finetune']:.2f}% before fine-tuning", flush=True)
        lr = float(variant.split("-lr")[1]) if "-lr" in variant else 0.01
        t1 = time.perf_counter()
        _finetune(model, data, tune_idx, calib, teacher, args.epochs, lr, args.seed)
        info.update(after_finetune=_accuracy(model, test), finetune_lr=lr, finetune_epochs=args.epochs,
                    finetune_seconds=time.perf_counter() - t1, seconds=time.perf_counter() - t0)
        print(f"{variant}: {info['after_finetune']:.2f}% after {args.epochs} distilled epoch(s), "
              f"{info['seconds']:.0f} s", flush=True)
        steps[variant] = info
        _write(results, json_path)
    _write(results, json_path)
    return 0


def _build(baseline, plan, variant, data, tune_idx, args):
    from mtd.layers import get_module, replace_module
    from mtd.planner.factor_cache import FactorCache
    from mtd.planner.layer_factory import build_layer
    from mtd.recovery import collect_input_stats
    from mtd.recovery.reconstruct import ReconstructionConfig, reconstruct
    from mtd.train.finetune import recalibrate_batchnorm

    cfg = ReconstructionConfig()
    cfg = dataclasses.replace(cfg, images=args.recon_images or cfg.images,
                              steps=cfg.steps if args.recon_steps is None else args.recon_steps)
    images = data.batches(tune_idx[:cfg.images], 128, torch.device("cpu"))
    t0 = time.perf_counter()
    names = [layer["name"] for layer in plan if layer["method"] != "dense"]
    stats = collect_input_stats(baseline, images, names, progress=True) if variant.startswith("aware") else {}
    info = {"stats_seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    model, cache = copy.deepcopy(baseline), FactorCache()
    for layer in plan:
        if layer["method"] == "dense":
            continue
        module = get_module(baseline, layer["name"])
        # no warm-start chain: the weight-only row decomposed each layer directly (from_conv)
        factors = cache.factors(module.weight, layer["method"], layer["ranks"], args.seed,
                                stats=stats.get(layer["name"]))
        replace_module(model, layer["name"], build_layer(module, layer["method"], factors, backend="torch"))
    info["decompose_seconds"] = time.perf_counter() - t0
    if variant.startswith("recon") or variant.startswith("aware-recon"):
        t1 = time.perf_counter()
        layers = reconstruct(model, baseline, images, cfg, seed=args.seed, progress=True)
        info.update(reconstruction=[l.to_dict() for l in layers], reconstruct_seconds=time.perf_counter() - t1,
                    reconstruction_config=dataclasses.asdict(cfg))
        for l in layers:
            print(f"  {l.name}: error {l.error_before:.4f} -> {l.error_after:.4f} ({l.seconds:.1f} s)", flush=True)
    if variant != "recon-nobn":
        recalibrate_batchnorm(model, data.loader(tune_idx, 128, train=True, device=torch.device("cpu"),
                                                 seed=args.seed))
    return model, info


def _finetune(model, data, tune_idx, calib, teacher, epochs, lr, seed):
    from mtd.planner.sensitivity import score_loader
    from mtd.train.finetune import cp_factor_lr_scales, finetune

    loader = data.loader(tune_idx, 128, train=True, device=torch.device("cpu"), seed=seed)
    finetune(model, loader, epochs=epochs, lr=lr, teacher=teacher, lr_scales=cp_factor_lr_scales(model, 0.5),
             eval_fn=lambda m: score_loader(m, calib).accuracy, seed=seed, progress=True)


def _accuracy(model, batches) -> float:
    from mtd.planner.sensitivity import score_loader

    return score_loader(model, batches).accuracy


def _write(results: dict, path: Path) -> None:
    from mtd.utils import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(results, f, indent=2)
    steps = results["steps"]
    lines = [f"# Recovery of full-width VGG11 at a fixed 35x plan ({results['machine']['cpu']}, "
             f"{results['machine']['avx']}, torch {results['machine']['torch']})", "",
             f"Baseline `{results['args']['checkpoint']}`: {steps['baseline']['test_accuracy']:.2f}% on "
             f"{results['args']['test']} seeded test images (seed {results['args']['seed']}).", "",
             "| variant | before fine-tuning | after fine-tuning | epochs | peak lr | recovery s | total s |",
             "|---|---|---|---|---|---|---|"]
    for name, s in steps.items():
        if name == "baseline":
            continue
        lines.append(f"| {name} | {s['before_finetune']:.2f}% | {s['after_finetune']:.2f}% | {s['finetune_epochs']} | "
                     f"{s['finetune_lr']:g} | {s.get('reconstruct_seconds', 0):.0f} | {s['seconds']:.0f} |")
    with atomic_write(path.with_suffix(".md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
