"""``mtd report``: per-layer table, Markdown report and PNG plots from plans / compressed checkpoints."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import CLIError, _one_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables, Markdown and plots from plan JSONs or compressed checkpoints")
    p.add_argument("inputs", nargs="+", help="plan .json files or compressed .pt checkpoints")
    p.add_argument("--out", default="mtd-out/report", help="folder for report.md and the PNGs")
    p.add_argument("--title", default="mtd compression report")
    p.set_defaults(func=run)


def read_plan(path: str):
    """A Plan from a plan JSON or from a compressed checkpoint (written by ``mtd compress`` / ``mtd.save``)."""
    from ..planner import Plan

    if not Path(path).is_file():
        raise CLIError(f"{path!r} does not exist")
    if path.endswith(".json"):
        try:
            return Plan.load(path)
        except (ValueError, TypeError) as err:
            raise CLIError(f"{path!r} is not an mtd plan: {err}") from None
    from ..serialization import load_plan

    try:
        return load_plan(path)
    except ValueError as err:
        raise CLIError(_one_line(err)) from None


def write_report(plans: list, out: str, title: str) -> Path:
    """Write report.md, accuracy_vs_ratio.png and layers_<method>.png into ``out``; returns the .md path."""
    from ..report import markdown_report, plot_accuracy_vs_ratio, plot_layer_methods, summary_row

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [plot_accuracy_vs_ratio([summary_row(p) for p in plans], out_dir / "accuracy_vs_ratio.png").name]
    for i, p in enumerate(plans):
        images.append(plot_layer_methods(p, out_dir / f"layers_{i}_{p.method}.png").name)
    md = out_dir / "report.md"
    from ..utils import atomic_write

    with atomic_write(md, "w") as f:
        f.write(markdown_report(plans, title=title, images=images))
    return md


def run(args: argparse.Namespace) -> int:
    from ..report import layer_table

    plans = [read_plan(p) for p in args.inputs]
    for path, plan in zip(args.inputs, plans):
        print(f"== {path} ({plan.method}, model {plan.model_name} {plan.model_kwargs})")
        print(layer_table(plan))
        print()
    md = write_report(plans, args.out, args.title)
    print(f"report written to {md}")
    return 0
