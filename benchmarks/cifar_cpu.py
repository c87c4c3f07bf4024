#!/usr/bin/env python
"""CIFAR-10 frontier on the CPU: accuracy vs compression of MTD, CP-only and Tucker-only, same fine-tuning.

Steps (each written to ``<out>/<stem>.{json,md,png}`` when it finishes; a restarted run skips finished steps):

1. baseline: VGG11 (width ``--width``) trained ``--epochs`` epochs on the training images less ``--val`` of them
   (checkpoint cached under ``runs/``); those ``--val`` images verify every compressed model's budget
   (``val_data``): images the baseline never trained on, so a held-out drop is not inflated by memorisation;
2. control: the dense baseline fine-tuned with the same schedule as every compressed model (fine-tuning
   alone can lift a short-trained baseline; drops are reported against the baseline and the better of both);
3. mtd-budget: ``mtd.compress`` with ``--max-drop`` (the search of ``mtd.planner.search``);
4. for each ratio in ``--ratios``: MTD at that target ratio, CP-uniform and Tucker-uniform at the same ratio.

Every compressed model is fine-tuned ``--finetune-epochs`` epochs (distilled from the baseline) and evaluated
on the 10,000 test images. About 1 h at the defaults (1 torch thread, AVX-512 host, 2026-12-06).

Smoke run:  python benchmarks/cifar_cpu.py --epochs 1 --finetune-epochs 1 --subset 3000 --val 500 --grid tiny \
    --ratios 4 --out /tmp/cc_smoke
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_util as bu  # noqa: E402
import _experiment as ex  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model", default="vgg11")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=15, help="baseline training epochs")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--ratios", default="4,8,16", help="ratios of the accuracy-vs-compression curves")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--confidence", type=float, default=0.8)
    p.add_argument("--val", type=int, default=5000, help="training images kept out of the baseline's training; "
                   "they verify the budget")
    p.add_argument("--grid", default="full", choices=("full", "small", "coarse", "tiny"))
    p.add_argument("--subset", type=int, default=None, help="use only this many training images (smoke runs)")
    p.add_argument("--cache-dir", default="runs/cifar_cpu_cache", help="decompositions and candidate scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stem", default=None, help="results file name (default cifar_cpu[_subsetN])")
    p.add_argument("--baseline-only", action="store_true", help="train (or load) the cached baseline and stop")
    args = p.parse_args(argv)

    from mtd.data import TensorDataLoader

    arrays, val_data = bu.cifar_arrays(args.data, args.subset, args.seed).split_validation(args.val, args.seed)
    stem = args.stem or (f"cifar_cpu_subset{args.subset}" if args.subset else "cifar_cpu")
    if args.baseline_only:
        _baseline(arrays, args, torch.device("cpu"))
        return 0
    out = Path(args.out)
    results = bu.resumed_results(out / f"{stem}.json", args)
    steps = results["steps"]
    device = torch.device("cpu")
    test = TensorDataLoader(arrays.test_x, arrays.test_y, 500, train=False, device=device)
    t_run, prior_seconds = time.perf_counter(), results.get("wall_seconds", 0.0)  # a resumed run adds up

    def save() -> None:
        results["wall_seconds"] = prior_seconds + time.perf_counter() - t_run
        write_results(results, out, stem)

    baseline = _baseline(arrays, args, device)
    if "baseline" not in steps:
        steps["baseline"] = {"accuracy": ex.test_accuracy(baseline, test), "params": ex.params(baseline),
                             "epochs": args.epochs}
        save()
    if "control" not in steps:
        steps["control"] = _control(baseline, arrays, args, device, test)
        save()
    reference = max(steps["baseline"]["accuracy"], steps["control"]["accuracy"])
    results["reference_accuracy"] = reference
    jobs = [("mtd-budget", "mtd", None)]
    for r in [float(x) for x in args.ratios.split(",") if x]:
        jobs += [(f"mtd@{r:g}", "mtd", r), (f"cp-uniform@{r:g}", "cp-uniform", r),
                 (f"tucker-uniform@{r:g}", "tucker-uniform", r)]
    for name, method, ratio in jobs:
        if name in steps:
            continue
        steps[name] = _compress_step(baseline, arrays, val_data, args, device, test, method, ratio)
        print(f"{name}: {steps[name]['param_ratio']:.2f}x, test {steps[name]['accuracy']:.2f}% "
              f"(drop {steps['baseline']['accuracy'] - steps[name]['accuracy']:+.2f}), {steps[name]['seconds']:.0f} s")
        save()
    save()
    print((out / f"{stem}.md").read_text())
    return 0


def _baseline(arrays, args, device):
    """The trained baseline, from its cached checkpoint when one exists."""
    from mtd.models import load_model, save_checkpoint

    path = Path("runs") / f"{args.model}_w{args.width:g}_e{args.epochs}_s{args.seed}_n{len(arrays.train_y)}.pt"
    if path.is_file():
        return load_model(path).to(device).eval()
    model = ex.train_baseline(arrays, args.model, args.width, epochs=args.epochs, lr=0.1, batch_size=128,
                              seed=args.seed, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, model_name=args.model,
                    model_kwargs={"width": args.width, "num_classes": len(arrays.classes)})
    return model


def _control(baseline, arrays, args, device, test) -> dict:
    """The dense baseline through the same fine-tuning (distilled from itself, all training images)."""
    t0 = time.perf_counter()
    model = ex.finetune_control(baseline, arrays, epochs=args.finetune_epochs, seed=args.seed, device=device)
    return {"accuracy": ex.test_accuracy(model, test), "seconds": time.perf_counter() - t0,
            "finetune_epochs": args.finetune_epochs}


def _compress_step(baseline, arrays, val_data, args, device, test, method, ratio) -> dict:
    from mtd.planner import CompressConfig

    t0 = time.perf_counter()
    cfg = CompressConfig(method=method, max_drop=args.max_drop if ratio is None else None, target_ratio=ratio,
                         confidence=args.confidence, grid=args.grid, finetune_epochs=args.finetune_epochs,
                         seed=args.seed, cache_dir=args.cache_dir)
    _, plan, accuracy, _ = ex.compress_and_test(baseline, arrays, test, device=device, config=cfg, val_data=val_data)
    r = plan.results
    row = {"method": method, "target_ratio": ratio, "param_ratio": r["model_param_ratio"],
           "macs_ratio": plan.totals()["macs_ratio"], "accuracy": accuracy,
           "seconds": time.perf_counter() - t0, "finetune_epochs": args.finetune_epochs, "seed": args.seed,
           "verdict": r["verdict"], "verification": r.get("verification"),
           "layers": [{"name": l.name, "method": l.method, "ranks": l.ranks, "params_before": l.params_before,
                       "params_after": l.params_after} for l in plan.layers]}
    if "search" in r:
        row["search"] = r["search"]
    return row


# -- reporting ------------------------------------------------------------------------------------------------
def write_results(results: dict, out: Path, stem: str) -> None:
    bu.write_result_files(results, out, stem, _markdown, _plot)


def _markdown(results: dict, stem: str) -> str:
    a, m, steps = results["args"], results["machine"], results["steps"]
    base = steps.get("baseline", {}).get("accuracy")
    ref = results.get("reference_accuracy", base)
    lines = [f"# CIFAR-10 frontier on the CPU: {a['model']} width {a['width']}", "",
             f"Machine: {m['cpu']} (host {m['host']}, torch {m['torch']}, {m['torch_threads']} threads). "
             f"Baseline trained {a['epochs']} epochs; every compressed model and the dense control fine-tuned "
             f"{a['finetune_epochs']} epochs (distilled from the baseline); seed {a['seed']}; candidate grid "
             f"`{a['grid']}`; budget {a['max_drop']} point at confidence {a['confidence']} on {a['val']} "
             f"training images the baseline never trained on. "
             f"Wall time {results.get('wall_seconds', 0) / 60:.1f} min. "
             f"Test accuracy on the 10,000 test images.", ""]
    if base is not None:
        lines.append(f"Baseline {base:.2f}%"
                     + (f", dense control {steps['control']['accuracy']:.2f}%" if "control" in steps else "")
                     + "; drops are against the baseline and against the better of the two.")
        lines.append("")
    lines += ["| step | method | target | params | MACs | test acc (%) | drop vs baseline | drop vs best dense | "
              "validation drop (+margin) | time (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in steps.items():
        if name in ("baseline", "control"):
            continue
        v = s.get("verification") or {}
        held = f"{v['drop']:+.2f} (+{v['margin']:.2f})" if v else ""
        lines.append(f"| {name} | {s['method']} | {s['target_ratio'] or 'budget'} | {s['param_ratio']:.2f}x | "
                     f"{s['macs_ratio']:.2f}x | {s['accuracy']:.2f} | {base - s['accuracy']:+.2f} | "
                     f"{ref - s['accuracy']:+.2f} | {held} | {s['seconds']:.0f} |")
    budget = steps.get("mtd-budget")
    if budget:
        lines += ["", f"**mtd-budget**: {budget['verdict']}", "", "| layer | method | ranks | params before | after |",
                  "|---|---|---|---|---|"]
        for l in budget["layers"]:
            lines.append(f"| {l['name']} | {l['method']} | {l['ranks']} | {l['params_before']} | {l['params_after']} |")
        if "search" in budget:
            lines += bu.search_lines(budget["search"], "the validation images")
    lines += ["", f"![accuracy vs compression]({stem}.png)", ""]
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    plt = bu.pyplot()
    steps = results["steps"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, style in (("mtd", "o-"), ("cp-uniform", "s--"), ("tucker-uniform", "^--")):
        pts = sorted((s["param_ratio"], s["accuracy"]) for n, s in steps.items()
                     if n not in ("baseline", "control", "mtd-budget") and s["method"] == method)
        if pts:
            ax.plot(*zip(*pts), style, label=f"{method} (target ratios)")
    if "mtd-budget" in steps:
        s = steps["mtd-budget"]
        ax.plot([s["param_ratio"]], [s["accuracy"]], "r*", markersize=14, label="mtd, budget search")
    if "baseline" in steps:
        base = steps["baseline"]["accuracy"]
        ax.axhline(base, color="gray", lw=1, label="dense baseline")
        ax.axhline(base - results["args"]["max_drop"], color="gray", lw=1, ls=":", label="baseline - budget")
    if "control" in steps:
        ax.axhline(steps["control"]["accuracy"], color="k", lw=1, ls="-.", label="dense control (fine-tuned)")
    ax.set_xscale("log")
    ax.set_xlabel("parameter compression (x, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"CIFAR-10 {results['args']['model']} width {results['args']['width']} ({socket.gethostname()})")
    ax.legend(fontsize=8)
    bu.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
