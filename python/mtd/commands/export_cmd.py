"""``mtd export``: write a compressed (or baseline) checkpoint as ONNX or as a ``torch.export`` program."""
from __future__ import annotations

import argparse

from .common import CLIError, add_model_args, load_any_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (standard Conv nodes) or torch.export (.pt2)")
    p.add_argument("--checkpoint", required=True, help="compressed.pt from mtd compress (or a baseline)")
    p.add_argument("--out", required=True, help="model.onnx (ONNX) or model.pt2 (torch.export program)")
    p.add_argument("--input-shape", default="1,3,32,32", help="example input N,C,H,W (default 1,3,32,32; the "
                   "ONNX batch dimension stays dynamic)")
    add_model_args(p, "architecture of a model outside the registry: module:function")
    p.set_defaults(func=run)


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
    example = torch.randn(shape)
    if args.out.endswith(".onnx"):
        from ..export import export_onnx

        export_onnx(model, args.out, example)
        note = "standard ONNX ops only: runs on any ONNX runtime"
    elif args.out.endswith(".pt2"):
        from ..utils import atomic_write

        with atomic_write(args.out, "wb") as handle:
            torch.export.save(torch.export.export(model, (example,)), handle)
        note = "keeps the fused torch.ops.mtd ops: load it where mtd_kernels is installed (import mtd_kernels)"
    else:
        raise CLIError(f"--out must end in .onnx or .pt2, got {args.out!r}")
    kind = f"compressed ({plan.method})" if plan else "baseline"
    print(f"exported {kind} {args.checkpoint} -> {args.out} ({note})")
    return 0
