"""``mtd export``: write a compressed (or baseline) checkpoint as ONNX or as a ``torch.export`` program."""
from __future__ import annotations

import argparse

from .common import CLIError, add_model_args, load_any_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (standard Conv nodes) or torch.export (.pt2)")
    p.add_argument("--checkpoint", required=True, help="compressed.pt from mtd compress (or a baseline)")
    p.add_argument("--out", required=True, help="model.onnx (ONNX) or model.pt2 (torch.export program)")
    p.add_argument("--input-shape", default="1,3,32,32", help="example input N,C,H,W (default 1,3,32,32; the "
                   "batch dimension stays dynamic)")
    p.add_argument("--no-prepare", action="store_true", help="export the model as trained (default: prepared for "
                   "inference, mtd.prepare_inference: BatchNorm folded into the convs, ReLU fused into the mtd ops)")
    add_model_args(p, "architecture of a model outside the registry: module:function")
    p.set_defaults(func=run)


def write_program(model, path, example) -> None:
    """``torch.export`` ``model`` (eval mode) on ``example`` with a dynamic batch dimension; save it atomically."""
    import torch
    from torch.export import Dim

    from ..utils import atomic_write

    if example.shape[0] < 2:  # torch.export specialises a size-1 dimension to 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: Dim.DYNAMIC},))
    with atomic_write(path, "wb") as handle:
        torch.export.save(program, handle)


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise CLIError(f"--input-shape must be four positive ints N,C,H,W, got {args.input_shape!r}")
    model, plan = load_any_model(args.checkpoint, args.model)
    model.eval()
    if not args.no_prepare:
        from ..layers import prepare_inference

        model = prepare_inference(model)
    example = torch.randn(shape)
    if args.out.endswith(".onnx"):
        from ..export import export_onnx

        export_onnx(model, args.out, example)
        note = "standard ONNX ops only: runs on any ONNX runtime"
    elif args.out.endswith(".pt2"):
        write_program(model, args.out, example)
        note = "keeps the fused torch.ops.mtd ops: load it where mtd_kernels is installed (import mtd_kernels)"
    else:
        raise CLIError(f"--out must end in .onnx or .pt2, got {args.out!r}")
    kind = f"compressed ({plan.method})" if plan else "baseline"
    prepared = "as trained" if args.no_prepare else "prepared for inference"
    print(f"exported {kind} {args.checkpoint} ({prepared}) -> {args.out} ({note})")
    return 0
