"""``mtd eval``: test accuracy of a baseline or compressed checkpoint."""
from __future__ import annotations

import argparse

from .common import add_model_args, data_loaders, load_any_model, load_data, parse_floats
from .train_cmd import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a (baseline or compressed) checkpoint on the test set")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--image-size", type=int, default=None, help="an image folder of any size: --data ROOT with "
                   "test/<class>/ (or a folder of class folders, or a tarball of either, unpacked once into the cache "
                   "folder), decoded on the fly at this side; needs --mean, --std")
    p.add_argument("--no-speed", action="store_true", help="skip the latency comparison of a compressed model "
                   "with its original architecture on this CPU")
    add_model_args(p, "architecture of a model outside the registry: module:function")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import evaluate
    from ..utils import pick_device

    device = pick_device(args.device)
    model, plan = load_any_model(args.checkpoint, args.model)
    if args.image_size is not None:
        from .folder_data import test_folder

        test = test_folder(args, args.batch_size)
    else:
        arrays = load_data(args.data, args.cache_dir, progress=not args.quiet)
        _, test = data_loaders(arrays, args.batch_size, device, mean=parse_floats(args.mean, "--mean"),
                               std=parse_floats(args.std, "--std"))
    result = evaluate(model.to(device), test)
    params = sum(p.numel() for p in model.parameters())
    kind = f"compressed ({plan.method})" if plan else "baseline"
    print(f"{args.checkpoint}: {kind}, {params:,} parameters, test accuracy {100 * result['accuracy']:.2f}% "
          f"(loss {result['loss']:.4f}, {result['samples']} images)")
    if plan is not None and not args.no_speed:
        from ..report.latency import compare_speed, speed_lines

        original = _original_architecture(plan, args.model)  # random weights: speed does not depend on them
        speed = compare_speed(original, model.cpu(), next(iter(test))[0][:1].cpu())
        print("\n".join(speed_lines(speed)))
    return 0


def _original_architecture(plan, model_spec):
    """The uncompressed architecture of a compressed checkpoint: ``--model``'s builder, else the registry's."""
    from ..models import build_model
    from .common import import_builder, is_builder_spec

    if is_builder_spec(model_spec):
        return import_builder(model_spec)()
    return build_model(plan.model_name, **plan.model_kwargs)
