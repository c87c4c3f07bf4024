"""``mtd compress``: plan + fine-tune + verify a compression; with only ``--data`` runs a quick demo.

The quick default (no ``--checkpoint``) trains a reduced-width VGG11 for a few epochs, compresses it at
1% maximum drop with the small candidate grid (verified on 10,000 training images the quick baseline never
trains on), evaluates both on the test set and writes into ``--out`` the plan, the compressed checkpoint
(``compressed.pt``, reloadable and trainable with ``mtd.load``), the model prepared for inference as a
``torch.export`` program (``compressed.pt2``: BatchNorm folded, ReLU fused) and a report — a few minutes on
a 2-core CPU. ``--smoke`` runs the same job at smoke size (a random subset of the images, one epoch, the
tiny candidate grid; seconds), which CI uses to check that a fresh ``pip install .`` runs the main job.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (CLIError, add_model_args, data_loaders, is_builder_spec, load_baseline, load_data, parse_floats,
                     under_torchrun)
from .train_cmd import DEFAULT_MODEL, DEFAULT_WIDTH, add_common, train_baseline

QUICK_TRAIN_EPOCHS = 3
# the quick baseline never trains on these training images: they verify the budget (SMOKE: (500, 200) images).
# 10,000 rather than 5,000: the standard error of a verified drop, and so the margin, shrink by ~sqrt(2).
QUICK_VAL_IMAGES, SMOKE_VAL_IMAGES = 10000, 100
# The quick baseline is trained 3 epochs, far from converged: its fine-tunes are continued training, and the
# library's rate for converged models (0.01) leaves them short. Measured on its 4.82x / 6.24x models (2 epochs,
# held-out drop, 5,000 images): lr 0.003 1.72 / -, 0.01 1.24 / -, 0.03 0.90 / 1.96, 0.06 0.48 / 0.76,
# 0.1 0.62 / 1.02 (README, "The README's main job").
QUICK_FINETUNE_LR = 0.06
# Probes scored on 2,048 calibration images (with 3 fine-tuning epochs a round instead of 2: seed 0 went from
# 3.46x to 5.20x within budget, 5.2 min). On 512 the paired standard error of a probe's drop is about a point
# (8% of the images changing class: sqrt(0.08 / 512) = 1.25 points), and a noisy probe (4.15x: 1.56 points,
# 3.46x: 0.00) stopped the search before it tried 4.15x.
QUICK_CALIB_IMAGES = 2048
# Eight fine-tuning epochs a round and four rounds: what bf16 + channels_last and the teacher bank buy
# (benchmarks/results/finetune_speed.md). Three seeds each on a Zen 4 host with AVX512_BF16
# (benchmarks/results/quick_job*.md): 3 epochs x 3 rounds took 240 s on seed 0 (5.24x); 6 x 4 gave 7.57x / 9.48x / 6.88x
# within budget in 6.1-6.5 min; 8 x 4 gave 11.00x / 9.48x / 9.10x in 6.2-7.4 min. On seed 0, 11.62x verified
# +1.93 held-out points after 3 epochs, +1.67 after 6 and +0.84 after 8.
QUICK_FINETUNE_EPOCHS, QUICK_SEARCH_ROUNDS = 8, 4
# --smoke: images kept (train, test) and the settings that make the main job take seconds
SMOKE_IMAGES = (500, 200)
SMOKE_OPTIONS = dict(grid="tiny", calib_size=64, holdout_size=100, finetune_epochs=1, search_rounds=1,
                     recovery_images=64, reconstruct_steps=20,
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
    p.add_argument("--confidence", type=float, default=None, help="one-sided confidence that the verified model's "
                   "true drop is within --max-drop (default 0.8; higher: a wider margin, less compression)")
    p.add_argument("--method", default="mtd", choices=PLANNER_METHODS)
    p.add_argument("--layers", default=None, help="comma-separated layer names to compress (default: all)")
    p.add_argument("--calib-size", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--finetune-lr", type=float, default=None, help="peak fine-tuning learning rate (default "
                   f"{QUICK_FINETUNE_LR} for the quick demo's short-trained baseline, 0.01 with a checkpoint)")
    p.add_argument("--search-rounds", type=int, default=None, help="fine-tuned and verified rounds of the budget "
                   "search (default 4 for the quick demo, 3 with a checkpoint)")
    p.add_argument("--finetune-views", type=int, default=None, help="augmented views per fine-tuning image "
                   "whose teacher outputs are computed once and reused (default 16; 0: fresh augmentation every "
                   "epoch, teacher run on every batch)")
    p.add_argument("--no-speed", action="store_true", help="skip the latency comparison on this CPU (original, "
                   "compressed, and onnxruntime / OpenVINO where installed; a few seconds)")
    p.add_argument("--no-reconstruct", action="store_true", help="skip the layer-by-layer reconstruction of "
                   "each decomposed layer before fine-tuning (on by default)")
    p.add_argument("--aware", action="store_true", help="decompose activation-aware (from the layers' input "
                   "statistics) instead of from the weights alone")
    p.add_argument("--train-epochs", type=int, default=QUICK_TRAIN_EPOCHS,
                   help="epochs of the quick baseline when no --checkpoint is given")
    p.add_argument("--grid", choices=("full", "small", "coarse", "tiny"), default=None, help="candidate grid "
                   "(default: small for the quick demo, full with a checkpoint; coarse for full-width models)")
    p.add_argument("--smoke", action="store_true", help="smoke size: a subset of the images, one training and "
                   "one fine-tuning epoch, the tiny grid (checks an install in seconds; results mean nothing)")
    p.add_argument("--val-images", type=int, default=None, help="with --checkpoint: verify the budget on this "
                   "many test images (the baseline never saw them) and report test accuracy on the others "
                   "(default: a held-out slice of the training images, pessimistic for a baseline trained on them)")
    p.add_argument("--image-size", type=int, default=None, help="image folders of any size and image size: "
                   "--data ROOT (train/<class>/, test/<class>/) or --data TRAIN --val-data VAL, decoded on the fly at "
                   "this side (a tarball of them is unpacked once into the cache folder); needs --checkpoint, --mean "
                   "and --std")
    p.add_argument("--val-data", default=None, help="with --image-size: the folder (or tarball) of class folders to "
                   "test on (--data is then the training folder)")
    p.add_argument("--out", default="mtd-out", help="output folder (plan.json, compressed.pt, compressed.pt2, "
                   "report/)")
    add_common(p)
    p.set_defaults(func=run)


def compress_options(args: argparse.Namespace, quick: bool) -> dict:
    """The ``CompressConfig`` fields the command line sets (validated before any training starts)."""
    from ..planner import CompressConfig

    options = dict(
        max_drop=args.max_drop, target_ratio=args.target_ratio, method=args.method, seed=args.seed,
        grid=args.grid or ("small" if quick else "full"),
        layers=tuple(s.strip() for s in args.layers.split(",")) if args.layers else None,
        calib_size=args.calib_size if args.calib_size is not None else (QUICK_CALIB_IMAGES if quick else 1024),
        finetune_epochs=args.finetune_epochs if args.finetune_epochs is not None else (
            QUICK_FINETUNE_EPOCHS if quick else 3),
        finetune_lr=args.finetune_lr if args.finetune_lr is not None else (
            QUICK_FINETUNE_LR if quick else CompressConfig.finetune_lr),
        confidence=args.confidence if args.confidence is not None else CompressConfig.confidence,
        search_rounds=args.search_rounds if args.search_rounds is not None else (
            QUICK_SEARCH_ROUNDS if quick else 3),
        reconstruct=not args.no_reconstruct,
        aware=args.aware, precision=args.precision,
        finetune_views=args.finetune_views if args.finetune_views is not None else CompressConfig.finetune_views)
    if args.mean is not None or args.std is not None:
        options.update(mean=parse_floats(args.mean, "--mean"), std=parse_floats(args.std, "--std"))
    if args.smoke:
        options.update(SMOKE_OPTIONS)
    return options


def run_compress(model, data, options: dict, device, progress: bool, val_data=None):
    """``mtd.compress(model, data, CompressConfig(**options))``; bad options or layers give a CLIError."""
    from .. import planner

    try:
        return planner.compress(model, data, planner.CompressConfig(**options), val_data=val_data, device=device,
                                progress=progress)
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
    """The command; under ``torchrun`` every rank runs it, the work split by ``mtd.compress``, and only rank 0
    prints and writes."""
    return under_torchrun(_run, args)


def _run(args: argparse.Namespace, device) -> int:
    from ..train import evaluate
    from ..train.distributed import is_main_process
    from ..utils import pick_device

    t0 = time.perf_counter()
    device = device or pick_device(args.device)
    progress = not args.quiet and is_main_process()
    quick = args.checkpoint is None
    out = Path(args.out)
    options = compress_options(args, quick)
    check_options(options)
    if quick and args.val_images:
        raise CLIError("--val-images needs --checkpoint (the quick baseline keeps its own validation images)")
    if quick and is_builder_spec(args.model):
        raise CLIError("--model module:function needs --checkpoint (the weights of your trained model)")
    if args.image_size is None and args.val_data is not None:
        raise CLIError("--val-data needs --image-size (CIFAR-style sources hold their own test split)")
    if args.image_size is not None and (quick or not 1 <= args.image_size <= 4096):
        raise CLIError("--image-size needs --checkpoint (your trained model) and a side in [1, 4096]")
    baseline = None  # check the checkpoint before the (slower) data loading
    if args.checkpoint is not None:
        baseline = load_baseline(args.checkpoint, args.model, args.width)
    if args.image_size is not None:
        baseline, compressed, plan, test = _compress_folders(args, baseline, options, device, progress)
    else:
        baseline, compressed, plan, test = _compress_cifar(args, baseline, options, device, progress, out)
    base_acc = 100 * evaluate(baseline, test)["accuracy"]
    acc = 100 * evaluate(compressed, test)["accuracy"]
    if not is_main_process():  # rank 0 writes the files and measures the speed
        return 0
    return _finish(args, baseline, compressed, plan, test, base_acc, acc, out, t0)


def _compress_folders(args, baseline, options: dict, device, progress: bool):
    """``--image-size``: the datasets decode and normalise (mean/std are theirs, not the planner's)."""
    from .folder_data import folder_data

    from ..train.distributed import main_process_first

    with main_process_first():  # rank 0 unpacks a tarball into the cache, the others read it
        data = folder_data(args)
    print(data.description)
    options = {k: v for k, v in options.items() if k not in ("mean", "std")}
    baseline = baseline.to(device).eval()
    compressed, plan = run_compress(baseline, data.train, options, device, progress, val_data=data.val)
    return baseline, compressed, plan, data.report


def _compress_cifar(args, baseline, options: dict, device, progress: bool, out: Path):
    """CIFAR-style sources, decoded into memory; without a checkpoint, the quick baseline trained first."""
    quick = baseline is None
    from ..train.distributed import main_process_first

    with main_process_first():  # rank 0 decodes into the cache, the others read it
        arrays = load_data(args.data, args.cache_dir, progress=progress)
    if args.smoke:
        arrays = arrays.subset(*SMOKE_IMAGES, seed=args.seed)
    val = None
    try:
        if quick:  # the quick baseline is ours: keep images out of its training to verify the budget on
            arrays, val = arrays.split_validation(SMOKE_VAL_IMAGES if args.smoke else QUICK_VAL_IMAGES, args.seed)
            print(f"verifying the budget on {len(val.train_y)} training images the quick baseline does not train on")
        elif args.val_images:
            arrays, val = arrays.split_validation(args.val_images, args.seed, from_test=True)
            print(f"verifying the budget on {args.val_images} test images; test accuracy is reported on the other "
                  f"{len(arrays.test_y)}")
    except ValueError as err:
        raise CLIError(str(err)) from None
    if quick:
        name, width = args.model or DEFAULT_MODEL, args.width or DEFAULT_WIDTH
        epochs = 1 if args.smoke else args.train_epochs
        print(f"no --checkpoint: training a quick {name} (width {width}) baseline for {epochs} epochs")
        baseline, _, secs = train_baseline(arrays, name, width, epochs, 0.1, 128, device, args.seed,
                                           progress, str(out / "baseline.pt"), args.precision)
        print(f"  trained in {secs:.0f} s -> {out / 'baseline.pt'}")
    baseline = baseline.to(device).eval()
    compressed, plan = run_compress(baseline, arrays, options, device, progress, val_data=val)
    _, test = data_loaders(arrays, 500, device, mean=options.get("mean"), std=options.get("std"))
    return baseline, compressed, plan, test


def _finish(args, baseline, compressed, plan, test, base_acc: float, acc: float, out: Path, t0: float) -> int:
    """Write the plan, the models and the report; print the layers, the verdict, the test accuracy and speed."""
    from ..serialization import save
    from .report_cmd import write_report

    plan.results["test"] = {"base_accuracy": base_acc, "accuracy": acc, "drop": base_acc - acc}
    if not args.no_speed:  # what the user gets on this CPU: before plan.json and the report are written
        from ..report.latency import compare_speed

        plan.results["speed"] = compare_speed(baseline, compressed, next(iter(test))[0][:1],
                                              rounds=3 if args.smoke else 5)
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    save(compressed, out / "compressed.pt", plan=plan)
    program = _write_inference_program(compressed, out / "compressed.pt2", test)
    md = write_report([plan], str(out / "report"), f"mtd compress ({plan.method})")
    from ..report import layer_table

    print(layer_table(plan))
    r = plan.results
    print(r["verdict"])
    print(f"test accuracy {base_acc:.2f}% -> {acc:.2f}% (drop {base_acc - acc:+.2f} points); parameters "
          f"{r['model_param_ratio']:.2f}x fewer (whole model), MACs {plan.totals()['macs_ratio']:.2f}x fewer "
          f"(conv/linear layers)")
    if "speed" in r:
        from ..report.latency import speed_lines

        print("\n".join(speed_lines(r["speed"])))
    print(f"wrote {out / 'plan.json'}, {out / 'compressed.pt'}, {program}{md}  "
          f"[{time.perf_counter() - t0:.0f} s total]")
    return 0


def _write_inference_program(model, path: Path, test) -> str:
    """Write ``model`` prepared for inference as a torch.export program; "" (with a note) if it cannot be traced."""
    from ..layers import prepare_inference
    from .export_cmd import write_program

    x = next(iter(test))[0][:1].cpu()
    try:
        write_program(prepare_inference(model).cpu(), path, x)
    except Exception as err:  # noqa: BLE001  (torch.export cannot trace every model; the checkpoint suffices)
        print(f"note: no {path.name}: torch.export failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
              f"compressed.pt holds the model")
        return ""
    return f"{path} (prepared for inference; needs mtd_kernels to run), "
