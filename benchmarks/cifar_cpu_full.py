#!/usr/bin/env python
"""Full-width VGG on the CPU: the thesis' row (VGG11 32x, VGG16 37x) from a trained baseline, beside CP-only and Tucker-only.

The checkpoint names its architecture; the thesis' ratio for it is the default of ``--ratios``.

Steps (each written to ``<out>/<stem>.{json,md,png}`` when it finishes; a restarted run skips finished steps):

1. baseline: the checkpoint (``--checkpoint``, e.g. ``../shared/models/vgg11-w1-cifar10.pt``) on the test set;
2. mtd-budget: ``mtd.compress`` with ``--max-drop`` on the ``coarse`` grid (candidates to 128x per layer), the
   budget verified on ``--val`` test images;
3. ``--ratios`` (default: the thesis' ratio for the checkpoint's model, 32 for VGG11, 37 for VGG16): MTD at each
   target ratio it did not reach within the budget;
4. cp-only and tucker-only at MTD's most compressed whole-model ratio (of 2. and 3.): one uniform per-layer
   ratio, chosen so that the whole model matches MTD's; every conv but the first (kept dense, as CP/Tucker
   papers do), classifier dense;
5. control: the dense baseline through the same fine-tuning (it is short-trained: fine-tuning alone can lift it);
6. with ``--long-finetune-epochs N``: MTD at the first of ``--ratios`` again, fine-tuned N epochs instead (what
   more fine-tuning buys at that ratio; not a like-for-like row beside the uniform baselines).

The test set is split once (seeded): ``--val`` images verify the budget inside ``mtd.compress`` (they choose the
model), the other images report it. Drops are measured on the report images, against the baseline and against
the better of the baseline and the control; accuracy on all 10,000 test images is given beside them.
Every compressed model and the control are fine-tuned ``--finetune-epochs`` epochs, distilled from the baseline.
About 100 minutes on 2 cores at the defaults.

Smoke run:  python benchmarks/cifar_cpu_full.py --checkpoint CK.pt --subset 3000 --finetune-epochs 1 --grid tiny
Thesis rows: python benchmarks/cifar_cpu_full.py --checkpoint ../shared/models/vgg11-w1-e12-cifar10.pt \
                 --stem cifar_cpu_full_vgg11   (and vgg16-w1-cifar10.pt with --stem cifar_cpu_full_vgg16)
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_util as bu  # noqa: E402
import _experiment as ex  # noqa: E402


THESIS_RATIOS = {"vgg11": 32.0, "vgg16": 37.0}  # parameter compression at < 1 point (Liang & Lee 2020)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="trained baseline written by `mtd train`")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--stem", default=None, help="results file name (default cifar_cpu_full[_subsetN])")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--confidence", type=float, default=0.8)
    p.add_argument("--val", type=int, default=5000, help="test images that verify the budget (the rest report)")
    p.add_argument("--grid", default="coarse", choices=("full", "small", "coarse", "tiny"))
    p.add_argument("--score-images", type=int, default=256, help="calibration images scoring each candidate")
    p.add_argument("--search-rounds", type=int, default=3)
    p.add_argument("--ratios", default=None,
                   help="MTD target ratios run after the budget search if not reached (default: the thesis' ratio)")
    p.add_argument("--subset", type=int, default=None, help="use only this many training images (smoke runs)")
    p.add_argument("--cache-dir", default="runs/cifar_cpu_full_cache", help="decompositions and candidate scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-finetune-epochs", type=int, default=0,
                   help="also run MTD at the first --ratios target with this many fine-tuning epochs (0: skip)")
    args = p.parse_args(argv)

    from mtd.models import load_checkpoint, load_model

    arrays = bu.cifar_arrays(args.data, args.subset, args.seed)
    stem = args.stem or (f"cifar_cpu_full_subset{args.subset}" if args.subset else "cifar_cpu_full")
    n_test = len(arrays.test_y)
    if not 0 < args.val < n_test:
        raise SystemExit(f"--val must be between 1 and {n_test - 1} (the rest of the test set reports)")
    order = np.random.default_rng(args.seed).permutation(n_test)
    val_idx, report_idx = np.sort(order[:args.val]), np.sort(order[args.val:])

    out = Path(args.out)
    json_path = out / f"{stem}.json"
    model_name = load_checkpoint(args.checkpoint).get("model_name")
    if args.ratios is None:
        if model_name not in THESIS_RATIOS:
            raise SystemExit(f"{args.checkpoint} holds {model_name!r}: the thesis has no ratio for it, pass --ratios")
        args.ratios = f"{THESIS_RATIOS[model_name]:g}"
    results = bu.resumed_results(json_path, args, additive=("long_finetune_epochs",))
    results.setdefault("model", model_name)
    checksum = _sha256(args.checkpoint)
    if results.setdefault("checkpoint_sha256", checksum) != checksum:
        raise SystemExit(f"{args.checkpoint} is not the checkpoint {json_path} was started from")
    steps = results["steps"]
    t_run, prior_seconds = time.perf_counter(), results.get("wall_seconds", 0.0)  # a resumed run adds up

    def save() -> None:
        results["wall_seconds"] = prior_seconds + time.perf_counter() - t_run
        write_results(results, out, stem)

    baseline = load_model(args.checkpoint).eval()
    tests = _TestSets(arrays, report_idx)
    val_data = (arrays.test_x[val_idx], arrays.test_y[val_idx])

    def run(name: str, make) -> None:
        if name in steps:
            return
        t0 = time.perf_counter()
        steps[name] = make()
        steps[name]["seconds"] = time.perf_counter() - t0
        s = steps[name]
        print(f"{name}: {s.get('param_ratio', 1.0):.2f}x, report {s['report_accuracy']:.2f}%, "
              f"test {s['test_accuracy']:.2f}%, {s['seconds']:.0f} s", flush=True)
        save()

    run("baseline", lambda: {**tests.score(baseline), "params": ex.params(baseline), "param_ratio": 1.0})
    run("mtd-budget", lambda: _compress(baseline, arrays, val_data, tests, args, "mtd", max_drop=args.max_drop))
    mtd_steps = ["mtd-budget"] if steps["mtd-budget"]["param_ratio"] > 1.0 else []  # 1.0: the budget fell back
    ratios = [float(x) for x in args.ratios.split(",") if x]
    for r in ratios:
        if steps["mtd-budget"]["param_ratio"] < r:
            run(f"mtd@{r:g}", lambda r=r: _compress(baseline, arrays, val_data, tests, args, "mtd", target_ratio=r))
            mtd_steps.append(f"mtd@{r:g}")
    if mtd_steps:  # CP-only and Tucker-only at MTD's most compressed whole-model ratio
        name = max(mtd_steps, key=lambda n: steps[n]["param_ratio"])
        ratio, at = steps[name]["param_ratio"], name.split("@")[-1] if "@" in name else "mtd"
        for method in ("cp-uniform", "tucker-uniform"):
            run(f"{method}@{at}", lambda m=method: _uniform_at(baseline, arrays, val_data, tests, args, m, ratio))
    run("control", lambda: _control(baseline, arrays, tests, args))
    if args.long_finetune_epochs > 0 and ratios:
        r, e = ratios[0], args.long_finetune_epochs
        run(f"mtd@{r:g}-ft{e}", lambda: _compress(baseline, arrays, val_data, tests, args, "mtd", target_ratio=r,
                                                  finetune_epochs=e))
    save()
    print((out / f"{stem}.md").read_text())
    return 0


class _TestSets:
    """The report images (test images the budget never saw) and the whole test set."""

    def __init__(self, arrays, report_idx: np.ndarray):
        from mtd.data import TensorDataLoader

        self.report = TensorDataLoader(arrays.test_x[report_idx], arrays.test_y[report_idx], 500, train=False)
        self.test = TensorDataLoader(arrays.test_x, arrays.test_y, 500, train=False)

    def score(self, model) -> dict:
        from mtd.train import evaluate

        model.eval()
        return {"report_accuracy": 100.0 * evaluate(model, self.report)["accuracy"],
                "test_accuracy": 100.0 * evaluate(model, self.test)["accuracy"]}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _config(args, finetune_epochs=None, **fields):
    from mtd.data import CIFAR10_MEAN, CIFAR10_STD
    from mtd.planner import CompressConfig

    return CompressConfig(grid=args.grid, score_images=args.score_images, search_rounds=args.search_rounds,
                          confidence=args.confidence, finetune_epochs=finetune_epochs or args.finetune_epochs,
                          seed=args.seed, cache_dir=args.cache_dir, mean=CIFAR10_MEAN, std=CIFAR10_STD, **fields)


def _compress(baseline, arrays, val_data, tests, args, method, *, max_drop=None, target_ratio=None,
              layers=None, finetune_epochs=None) -> dict:
    from mtd.planner import compress

    cfg = _config(args, finetune_epochs, method=method, max_drop=max_drop, target_ratio=target_ratio, layers=layers)
    compressed, plan = compress(baseline, arrays, cfg, val_data=val_data, device="cpu")
    r = plan.results
    row = {"method": method, "target_ratio": target_ratio, "finetune_epochs": cfg.finetune_epochs,
           "param_ratio": r["model_param_ratio"], "params": ex.params(compressed),
           "macs_ratio": plan.totals()["macs_ratio"], **tests.score(compressed),
           "verdict": r["verdict"], "verification": r.get("verification"),
           "fallback_to_original": r["fallback_to_original"], "compress_seconds": r["wall_time_s"],
           "layers": [{"name": l.name, "method": l.method, "ranks": l.ranks, "params_before": l.params_before,
                       "params_after": l.params_after, "single_layer_loss": l.sensitivity["loss"]}
                      for l in plan.layers]}
    if "search" in r:
        row["search"] = r["search"]
    return row


def _uniform_at(baseline, arrays, val_data, tests, args, method, whole_ratio) -> dict:
    """``method`` (cp-uniform / tucker-uniform) at the per-layer ratio whose whole-model ratio is ``whole_ratio``."""
    from mtd.layers import compressible_layers

    convs = [(n, m) for n, m in compressible_layers(baseline) if isinstance(m, torch.nn.Conv2d)][1:]
    total = ex.params(baseline)

    def whole(per_layer: float) -> float:
        saved = sum(m.weight.numel() - _uniform_params(m, method, per_layer) for _, m in convs)
        return total / (total - saved)

    lo, hi = 1.01, 4096.0  # whole() grows with the per-layer ratio; find the smallest that reaches whole_ratio
    if whole(hi) < whole_ratio:
        per_layer = hi
    else:
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if whole(mid) < whole_ratio else (lo, mid)
        per_layer = hi
    row = _compress(baseline, arrays, val_data, tests, args, method, target_ratio=per_layer,
                    layers=tuple(n for n, _ in convs))
    row["per_layer_ratio"] = per_layer
    return row


def _uniform_params(conv, method: str, ratio: float) -> int:
    """Parameters of ``conv`` under the planner's uniform rank rule (dense where that would not save any)."""
    from mtd import methods
    from mtd.planner.baselines import RANK_RULES

    rule, shape = RANK_RULES[method], tuple(conv.weight.shape)
    return min(methods.get(rule.method).params(shape, rule.ranks(conv.weight, ratio)), conv.weight.numel())


def _control(baseline, arrays, tests, args) -> dict:
    """The dense baseline through the same fine-tuning (distilled from itself, all training images)."""
    model = ex.finetune_control(baseline, arrays, epochs=args.finetune_epochs, seed=args.seed)
    return {**tests.score(model), "params": ex.params(model), "param_ratio": 1.0,
            "finetune_epochs": args.finetune_epochs}


# -- reporting ------------------------------------------------------------------------------------------------
def write_results(results: dict, out: Path, stem: str) -> None:
    bu.write_result_files(results, out, stem, _markdown, _plot)


def _references(steps: dict) -> tuple[float, float]:
    """Report accuracy of the baseline, and of the better of the baseline and the dense control."""
    base = steps["baseline"]["report_accuracy"]
    return base, max(base, steps.get("control", {}).get("report_accuracy", base))


def _markdown(results: dict, stem: str) -> str:
    a, m, steps = results["args"], results["machine"], results["steps"]
    n_report = 10000 - a["val"]
    lines = [f"# Full-width {_model_title(results)} on CIFAR-10, on the CPU", "",
             f"Machine: {m['cpu']} (host {m['host']}, torch {m['torch']}, {m['torch_threads']} threads). "
             f"Baseline `{Path(a['checkpoint']).name}` (sha256 `{results['checkpoint_sha256'][:12]}…`). Every "
             f"compressed model and the dense control fine-tuned {a['finetune_epochs']} epochs (the `-ftN` row: N), "
             f"distilled from the baseline; seed {a['seed']}; grid `{a['grid']}`; budget {a['max_drop']} point at "
             f"confidence {a['confidence']}, verified on {a['val']} test images; accuracy reported on the other "
             f"{n_report} test images (never seen by the search) and on all 10,000. "
             f"Wall time {results.get('wall_seconds', 0) / 60:.1f} min.", ""]
    if "baseline" not in steps:
        return "\n".join(lines)
    base, ref = _references(steps)
    lines += ["| step | params | ratio | report acc (%) | drop vs baseline | drop vs best dense | test acc, all 10k (%) "
              "| verified drop (+margin) | fine-tuning epochs | time (min) |", "|---" * 10 + "|"]
    for name, s in steps.items():
        v = s.get("verification") or {}
        held = f"{v['drop']:+.2f} (+{v['margin']:.2f})" if v else ""
        lines.append(f"| {name} | {s['params']:,} | {s.get('param_ratio', 1.0):.2f}x | {s['report_accuracy']:.2f} | "
                     f"{base - s['report_accuracy']:+.2f} | {ref - s['report_accuracy']:+.2f} | "
                     f"{s['test_accuracy']:.2f} | {held} | {_epochs(name, s, a)} | {s['seconds'] / 60:.1f} |")
    for name, s in steps.items():
        if "layers" not in s:
            continue
        lines += ["", f"**{name}**: {s['verdict']}" + (f" (per-layer ratio {s['per_layer_ratio']:.1f}x)"
                                                     if "per_layer_ratio" in s else ""), ""]
        if name.startswith("mtd"):
            lines += ["| layer | method | ranks | params before | after | layer ratio | single-layer loss increase |",
                      "|---|---|---|---|---|---|---|"]
            for l in s["layers"]:
                lines.append(f"| {l['name']} | {l['method']} | {l['ranks']} | {l['params_before']:,} | "
                             f"{l['params_after']:,} | {l['params_before'] / max(l['params_after'], 1):.1f}x | "
                             f"{l['single_layer_loss']:+.3f} |")
        if "search" in s:
            lines += bu.search_lines(s["search"], "the validation images")
    lines += ["", f"![accuracy vs compression]({stem}.png)", ""]
    return "\n".join(lines)


def _model_title(results: dict) -> str:
    """``VGG11`` / ``VGG16`` from the checkpoint's model name (results of earlier runs: VGG11)."""
    return results.get("model", "vgg11").upper()


def _epochs(name: str, step: dict, args: dict) -> str:
    """Fine-tuning epochs of a step (steps of earlier runs do not record them: the run's setting)."""
    return "" if name == "baseline" else str(step.get("finetune_epochs", args["finetune_epochs"]))


def _plot(results: dict, path: Path) -> None:
    plt = bu.pyplot()
    steps = results["steps"]
    if "baseline" not in steps:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"mtd": ("r*", 14), "cp-uniform": ("bs", 8), "tucker-uniform": ("g^", 8)}
    for name, s in steps.items():
        if "method" in s:
            marker, size = styles[s["method"]] if "-ft" not in name else ("m*", 14)
            ax.plot([s["param_ratio"]], [s["report_accuracy"]], marker, markersize=size, label=name)
    base, ref = _references(steps)
    ax.axhline(base, color="gray", lw=1, label="dense baseline")
    ax.axhline(ref - results["args"]["max_drop"], color="gray", lw=1, ls=":", label="best dense - budget")
    if "control" in steps:
        ax.axhline(steps["control"]["report_accuracy"], color="k", lw=1, ls="-.", label="dense control")
    thesis = THESIS_RATIOS.get(results.get("model", "vgg11"))
    if thesis:  # the thesis' point: its ratio at its bound (< 1 point below the dense model)
        ax.plot([thesis], [ref - 1.0], "o", mfc="none", mec="orange", markersize=12, mew=2,
                label=f"thesis: {thesis:g}x at < 1 point")
    ax.set_xscale("log")
    ax.set_xlabel("parameter compression (x, log)")
    ax.set_ylabel("accuracy on the report images (%)")
    ax.set_title(f"CIFAR-10 {_model_title(results)} width 1 ({results['machine']['cpu'][:40]}, "
                 f"{results['machine'].get('avx', '')})", fontsize=9)
    ax.legend(fontsize=8)
    bu.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
