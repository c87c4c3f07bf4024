"""``mtd compress``: plan + fine-tune + verify a compression; with only ``--data`` runs a quick demo.

The quick default (no ``--checkpoint``) trains a reduced-width VGG11 for a few epochs, compresses it at
1% maximum drop with a coarse candidate grid, evaluates both on the test set and writes the plan, the
compressed checkpoint and a report into ``--out`` — a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import CLIError, data_loaders, load_baseline, load_data
from .train_cmd import DEFAULT_MODEL, DEFAULT_WIDTH, add_common, train_baseline

QUICK_TRAIN_EPOCHS = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..planner import PLANNER_METHODS

    p = sub.add_parser("compress", help="compress a model (quick demo with only --data)")
    p.add_argument("--data", required=True, help="CIFAR-10 archive / image-folder tar / folder")
    p.add_argument("--checkpoint", default=None, help="baseline checkpoint (default: train a quick one)")
    p.add_argument("--model", default=None, help=f"model of the checkpoint (checked), default {DEFAULT_MODEL}")
    p.add_argument("--width", type=float, default=None, help=f"width (checked), default {DEFAULT_WIDTH}")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in points (default 1.0)")
    budget.add_argument("--target-ratio", type=float, default=None, help="parameter compression ratio instead")
    p.add_argument("--method", default="mtd", choices=PLANNER_METHODS)
    p.add_argument("--layers", default=None, help="comma-separated layer names to compress (default: all)")
    p.add_argument("--calib-size", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--train-epochs", type=int, default=QUICK_TRAIN_EPOCHS,
                   help="epochs of the quick baseline when no --checkpoint is given")
    p.add_argument("--grid", choices=("small", "full"), default=None, help="candidate grid (default: small "
                   "for the quick demo, full with a checkpoint)")
    p.add_argument("--out", default="mtd-out", help="output folder (plan.json, compressed.pt, report/)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import save_checkpoint
    from ..planner import CandidateGrid, compress
    from ..train import evaluate
    from ..utils import pick_device
    from .report_cmd import write_report

    t0 = time.perf_counter()
    device = pick_device(args.device)
    progress = not args.quiet
    quick = args.checkpoint is None
    out = Path(args.out)
    if args.checkpoint is not None:  # check the checkpoint before the (slower) data loading
        baseline = load_baseline(args.checkpoint, args.model, args.width)
    arrays = load_data(args.data, args.cache_dir, progress=progress)
    if quick:
        name, width = args.model or DEFAULT_MODEL, args.width or DEFAULT_WIDTH
        print(f"no --checkpoint: training a quick {name} (width {width}) baseline for {args.train_epochs} epochs")
        baseline, _, secs = train_baseline(arrays, name, width, args.train_epochs, 0.1, 128, device, args.seed,
                                           progress, str(out / "baseline.pt"))
        print(f"  trained in {secs:.0f} s -> {out / 'baseline.pt'}")
    baseline = baseline.to(device).eval()
    grid = CandidateGrid.small() if (args.grid or ("small" if quick else "full")) == "small" else CandidateGrid()
    layers = tuple(s.strip() for s in args.layers.split(",")) if args.layers else None
    calib_size = args.calib_size or (512 if quick else 1024)
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if quick else 3)
    try:
        compressed, plan = compress(
            baseline, arrays, max_drop=args.max_drop, target_ratio=args.target_ratio, method=args.method,
            calib_size=calib_size, holdout_size=1000 if quick else 2000, finetune_epochs=finetune_epochs,
            device=device, seed=args.seed, progress=progress, grid=grid, layers=layers,
            search_rounds=2 if quick else 3)
    except (ValueError, TypeError) as err:  # bad options / unsupported layers: one line, exit 2
        raise CLIError(str(err).splitlines()[0]) from None
    _, test = data_loaders(arrays, 500, device)
    base_acc = 100 * evaluate(baseline, test)["accuracy"]
    acc = 100 * evaluate(compressed, test)["accuracy"]
    plan.results["test"] = {"base_accuracy": base_acc, "accuracy": acc, "drop": base_acc - acc}
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    save_checkpoint(out / "compressed.pt", compressed.to(torch.device("cpu")),
                    model_name=plan.model_name, model_kwargs=plan.model_kwargs,
                    extra={"mtd_plan": json.dumps(plan.to_dict())})
    md = write_report([plan], str(out / "report"), f"mtd compress ({plan.method})")
    from ..report import layer_table

    print(layer_table(plan))
    r = plan.results
    print(r["verdict"])
    print(f"test accuracy {base_acc:.2f}% -> {acc:.2f}% (drop {base_acc - acc:+.2f} points); parameters "
          f"{r['model_param_ratio']:.2f}x fewer (whole model), FLOPs {plan.totals()['flops_ratio']:.2f}x fewer "
          f"(conv/linear layers)")
    print(f"wrote {out / 'plan.json'}, {out / 'compressed.pt'}, {md}  [{time.perf_counter() - t0:.0f} s total]")
    return 0
