"""A Markdown report: summary of one or more plans, then each plan's per-layer table."""
from __future__ import annotations

from typing import Optional, Sequence

from ..planner.plan import Plan
from .table import format_table, layer_table, summary_row


def markdown_report(plans: Sequence[Plan], title: str = "mtd compression report",
                    images: Sequence[str] = (), notes: Optional[str] = None) -> str:
    """Markdown text for ``plans`` (the first is taken as the main result); ``images`` are relative PNG paths."""
    out = [f"# {title}", ""]
    if notes:
        out += [notes, ""]
    rows = []
    for p in plans:
        s = summary_row(p)
        drop = (s["base_accuracy"] - s["accuracy"]) if None not in (s["base_accuracy"], s["accuracy"]) else None
        rows.append([s["method"], s["base_accuracy"], s["accuracy"], drop, s["accuracy_split"],
                     s["model_param_ratio"], s["layer_param_ratio"], s["macs_ratio"]])
    out += ["## Summary", "", format_table(("method", "base acc (%)", "acc (%)", "drop", "split", "param ratio",
                                            "conv/linear param ratio", "MACs ratio"), rows, markdown=True), ""]
    speed = plans[0].results.get("speed") if plans and plans[0].results else None
    if speed:
        from .latency import speed_lines

        title, table = speed_lines(speed, markdown=True)
        out += ["## Speed", "", title[0].upper() + title[1:] + ":", "", table, ""]
    for img in images:
        out += [f"![{img}]({img})", ""]
    for p in plans:
        b = p.budget or {}
        out += [f"## Layers: {p.method}", "", f"model `{p.model_name}` {p.model_kwargs}; budget: "
                f"max_drop={b.get('max_drop')}, target_ratio={b.get('target_ratio')}", "",
                layer_table(p, markdown=True), ""]
    return "\n".join(out)
