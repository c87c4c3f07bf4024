#!/usr/bin/env python
"""Do the budget search's probes measure compression? Probe drop against ratio on full-width VGG11.

Runs the first steps of ``mtd.compress`` exactly as ``benchmarks/cifar_cpu_full.py`` does (same checkpoint,
grid, scoring images, seed, so the same assignment path), then probes assignments spread along the path the
way the search does now: decompose, reconstruct layer by layer, re-estimate BatchNorm, measure the drop on
the 1,024 calibration images (and on ``--test`` seeded test images). Beside each probe: the probe the earlier
search measured at the same path index (a 0.25-epoch fine-tune at the fine-tuning rate instead of
reconstruction), read from ``--previous`` (``cifar_cpu_full.json``'s budget search). Each probe is written to
``<out>/probe_curve_vgg11.{json,md,png}`` when it finishes; a restarted run skips finished probes.
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--previous", default="benchmarks/results/cifar_cpu_full.json")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--stem", default="probe_curve_vgg11")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "mtd" / "cifar_cpu_full"))
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--indices", default=None, help="comma-separated path indices to probe (default: the "
                   "earlier search's probes and both ends of the path)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mtd.data import CIFAR10_MEAN, CIFAR10_STD
    from mtd.models import load_model
    from mtd.planner import CompressConfig
    from mtd.planner.compress import _Run  # the library's own steps, not a re-implementation
    from mtd.data.adapter import as_planning_data
    from mtd.planner.select import assignment_path
    from mtd.planner.sensitivity import score_loader

    previous = json.loads(Path(args.previous).read_text())
    prev_args = previous["args"]
    old = {p["index"]: p for p in previous["steps"]["mtd-budget"]["search"]["probes"]}
    arrays = bu.cifar_arrays(args.data, None, args.seed)
    order = np.random.default_rng(args.seed).permutation(len(arrays.test_y))
    val_idx = np.sort(order[:prev_args["val"]])
    test_idx = np.sort(order[prev_args["val"]:])[:args.test]  # report images only: never seen by any search
    cfg = CompressConfig(grid=prev_args["grid"], score_images=prev_args["score_images"], seed=args.seed,
                         cache_dir=args.cache_dir, mean=CIFAR10_MEAN, std=CIFAR10_STD, max_drop=1.0)
    baseline = load_model(args.checkpoint).eval()
    run = _Run(baseline, arrays, cfg, (arrays.test_x[val_idx], arrays.test_y[val_idx]), None, "cpu", True)
    test = as_planning_data((arrays.test_x[test_idx], arrays.test_y[test_idx]), mean=CIFAR10_MEAN,
                            std=CIFAR10_STD).batches(np.arange(len(test_idx)), 500, torch.device("cpu"))

    json_path = Path(args.out) / f"{args.stem}.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {"probes": {}}
    results.update(args=vars(args), machine=bu.machine_info())
    t0 = time.perf_counter()
    run.options = run._score()
    path = assignment_path(run.options, sum(o[0].params for o in run.options.values()))
    path = [a for a in path if run.ratio_of(a) > 1.0]
    results["scoring_seconds"] = time.perf_counter() - t0
    results["base_test_accuracy"] = score_loader(baseline, test).accuracy
    results["base_calibration_accuracy"] = run.base_calib.accuracy
    results["path_length"] = len(path)
    if args.indices:
        indices = sorted({int(i) for i in args.indices.split(",")})
    elif len(path) == previous_path_length(old):
        indices = sorted(set(old) | {0, len(path) - 1})
    else:
        indices = sorted({round(i) for i in np.linspace(0, len(path) - 1, 10)})
    for i in indices:
        if str(i) in results["probes"]:
            continue
        t1 = time.perf_counter()
        model = run._build(path[i])
        calib = run.calib.score(model).accuracy
        results["probes"][str(i)] = {
            "index": i, "ratio": run.ratio_of(path[i]), "calibration_drop": run.base_calib.accuracy - calib,
            "test_drop": results["base_test_accuracy"] - score_loader(model, test).accuracy,
            "previous_calibration_drop": old[i]["calibration_drop"] if i in old else None,
            "previous_ratio": old[i]["ratio"] if i in old else None,  # the same assignment: the same ratio
            "seconds": time.perf_counter() - t1}
        print(f"probe {i}: {results['probes'][str(i)]}", flush=True)
        _write(results, json_path)
    _write(results, json_path)
    return 0


def previous_path_length(old: dict) -> int:
    """The earlier search's path ends at its least compressed probe (it always probes the safe end)."""
    return max(old) + 1


def _write(results: dict, path: Path) -> None:
    from mtd.utils import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(results, f, indent=2)
    probes = sorted(results["probes"].values(), key=lambda p: -p["ratio"])
    m = results["machine"]
    lines = [f"# Probe drop against compression, full-width VGG11 ({m['cpu']}, {m['avx']}, torch {m['torch']})", "",
             f"`python benchmarks/studies/probe_curve.py --checkpoint {results['args']['checkpoint']}`; the "
             f"assignment path of `cifar_cpu_full.py`'s budget search ({results.get('path_length')} assignments; "
             f"scoring {results.get('scoring_seconds', 0):.0f} s). New probe: decompose, reconstruct, re-estimate "
             "BatchNorm, no fine-tuning. Previous probe: BatchNorm, then a 0.25-epoch fine-tune at lr 0.01 "
             "(the earlier run). Drops in points; calibration: 1,024 training images; test: "
             f"{results['args']['test']} test images no search saw.", "",
             "| path index | ratio | new probe: calibration drop | new probe: test drop | previous probe: "
             "calibration drop | s |",
             "|---|---|---|---|---|---|"]
    for p in probes:
        prev = "" if p["previous_calibration_drop"] is None else f"{p['previous_calibration_drop']:.2f}"
        lines.append(f"| {p['index']} | {p['ratio']:.2f}x | {p['calibration_drop']:.2f} | {p['test_drop']:.2f} | "
                     f"{prev} | {p['seconds']:.0f} |")
    with atomic_write(path.with_suffix(".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p["ratio"] for p in probes], [p["calibration_drop"] for p in probes], "o-",
                label="reconstruction + BN (now)")
        prev = [p for p in probes if p["previous_calibration_drop"] is not None]
        ax.plot([p["ratio"] for p in prev], [p["previous_calibration_drop"] for p in prev], "s--",
                label="0.25-epoch fine-tune (before)")
        ax.set_xscale("log")
        ax.set_xlabel("whole-model parameter ratio")
        ax.set_ylabel("probe drop on calibration images (points)")
        ax.set_title("VGG11 (full width): search probes")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
        plt.close(fig)
    except ImportError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
