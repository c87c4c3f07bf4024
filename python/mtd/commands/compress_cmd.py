"""``mtd compress``: plan + fine-tune + verify a compression; with only ``--data`` runs a quick demo.

The quick default (no ``--checkpoint``) trains a reduced-width VGG11 for a few epochs, compresses it at
1% maximum drop with a coarse candidate grid, evaluates both on the test set and writes the plan, the
compressed checkpoint and a report into ``--out`` — a few minutes on a 2-core CPU. ``--smoke`` runs the
same job at smoke size (a random subset of the images, one epoch, the tiny candidate grid; seconds), which
CI uses to check that a fresh ``pip install .`` runs the main job.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import CLIError, add_model_args, data_loaders, is_builder_spec, load_baseline, load_data, parse_floats
from .train_cmd import DEFAULT_MODEL, DEFAULT_WIDTH, add_common, train_baseline

QUICK_TRAIN_EPOCHS = 3
# --smoke: images kept (train, test) and the settings that make the main job take seconds
SMOKE_IMAGES = (500, 200)
SMOKE_OPTIONS = dict(grid="tiny", calib_size=64, holdout_size=100, finetune_epochs=1, search_rounds=1,
                     cp_n_iter_max=10)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..planner import PLANNER_METHODS

    p = sub.add_parser("compress", help="compress a model (quick demo with only --data)")
    p.add_argument("--data", required=True, help="CIFAR-10 archive / image-folder tar / folder")
    p.add_argument("--checkpoint", default=None, help="baseline checkpoint: an mtd checkpoint, or with --model "
                   "module:function a plain state_dict (default: train a quick one)")
    p.add_argument("--width", type=float, default=None, help=f"width (checked), default {DEFAULT_WIDTH}")
    add_model_args(p, f"model of the checkpoint: a registry name (checked; default {DEFAULT_MODEL}) or "
                      "module:function building your architecture without arguments")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in points (default 1.0)")
    budget.add_argument("--target-ratio", type=float, default=None, help="parameter compression ratio instead")
    p.add_argument("--method", default="mtd", choices=PLANNER_METHODS)
    p.add_argument("--layers", default=None, help="comma-separated layer names to compress (default: all)")
    p.add_argument("--calib-size", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--train-epochs", type=int, default=QUICK_TRAIN_EPOCHS,
                   help="epochs of the quick baseline when no --checkpoint is given")
    p.add_argument("--grid", choices=("full", "small", "coarse", "tiny"), default=None, help="candidate grid "
                   "(default: small for the quick demo, full with a checkpoint; coarse for full-width models)")
    p.add_argument("--smoke", action="store_true", help="smoke size: a subset of the images, one training and "
                   "one fine-tuning epoch, the tiny grid (checks an install in seconds; results mean nothing)")
    p.add_argument("--out", default="mtd-out", help="output folder (plan.json, compressed.pt, report/)")
    add_common(p)
    p.set_defaults(func=run)


def compress_options(args: argparse.Namespace, quick: bool) -> dict:
    """The ``CompressConfig`` fields the command line sets (validated before any training starts)."""
    options = dict(
        max_drop=args.max_drop, target_ratio=args.target_ratio, method=args.method, seed=args.seed,
        grid=args.grid or ("small" if quick else "full"),
        layers=tuple(s.strip() for s in args.layers.split(",")) if args.layers else None,
        calib_size=args.calib_size or (512 if quick else 1024),
        finetune_epochs=args.finetune_epochs if args.finetune_epochs is not None else (1 if quick else 3),
        search_rounds=2 if quick else 3)
    if args.mean is not None or args.std is not None:
        options.update(mean=parse_floats(args.mean, "--mean"), std=parse_floats(args.std, "--std"))
    if args.smoke:
        options.update(SMOKE_OPTIONS)
    return options


def run_compress(model, data, options: dict, device, progress: bool):
    """``mtd.compress(model, data, CompressConfig(**options))``; bad options or layers give a CLIError."""
    from .. import planner

    try:
        return planner.compress(model, data, planner.CompressConfig(**options), device=device, progress=progress)
    except (ValueError, TypeError) as err:  # bad options / unsupported layers: one line, exit 2
        raise CLIError(str(err).splitlines()[0]) from None


def check_options(options: dict) -> None:
    """Reject bad options at once (before data loading and the quick baseline's training)."""
    from .. import planner

    try:
        planner.CompressConfig(**options)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err).splitlines()[0]) from None


def run(args: argparse.Namespace) -> int:
    from ..serialization import save
    from ..train import evaluate
    from ..utils import pick_device
    from .report_cmd import write_report

    t0 = time.perf_counter()
    device = pick_device(args.device)
    progress = not args.quiet
    quick = args.checkpoint is None
    out = Path(args.out)
    options = compress_options(args, quick)
    check_options(options)
    if quick and is_builder_spec(args.model):
        raise CLIError("--model module:function needs --checkpoint (the weights of your trained model)")
    if args.checkpoint is not None:  # check the checkpoint before the (slower) data loading
        baseline = load_baseline(args.checkpoint, args.model, args.width)
    arrays = load_data(args.data, args.cache_dir, progress=progress)
    if args.smoke:
        arrays = arrays.subset(*SMOKE_IMAGES, seed=args.seed)
    if quick:
        name, width = args.model or DEFAULT_MODEL, args.width or DEFAULT_WIDTH
        epochs = 1 if args.smoke else args.train_epochs
        print(f"no --checkpoint: training a quick {name} (width {width}) baseline for {epochs} epochs")
        baseline, _, secs = train_baseline(arrays, name, width, epochs, 0.1, 128, device, args.seed,
                                           progress, str(out / "baseline.pt"))
        print(f"  trained in {secs:.0f} s -> {out / 'baseline.pt'}")
    baseline = baseline.to(device).eval()
    compressed, plan = run_compress(baseline, arrays, options, device, progress)
    _, test = data_loaders(arrays, 500, device, mean=options.get("mean"), std=options.get("std"))
    base_acc = 100 * evaluate(baseline, test)["accuracy"]
    acc = 100 * evaluate(compressed, test)["accuracy"]
    plan.results["test"] = {"base_accuracy": base_acc, "accuracy": acc, "drop": base_acc - acc}
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    save(compressed, out / "compressed.pt", plan=plan)
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
