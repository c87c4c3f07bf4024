"""Plain-text tables of a plan (one row per layer) and of several results side by side."""
from __future__ import annotations

from typing import Any, Sequence

from ..planner.plan import Plan


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Align ``rows`` under ``header`` (text) or make a GitHub Markdown table (``markdown=True``)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


LAYER_HEADER = ("layer", "method", "ranks", "params", "params after", "ratio", "MMACs", "MMACs after",
                "rel. error", "sens. acc")


def layer_rows(plan: Plan) -> list[list[Any]]:
    rows = []
    for l in plan.layers:
        sens = (l.sensitivity or {}).get("accuracy")
        rows.append([l.name, l.method, "x".join(map(str, l.ranks)) or "-", l.params_before, l.params_after,
                     l.params_before / max(l.params_after, 1), l.macs_before / 1e6, l.macs_after / 1e6,
                     l.rel_error if l.method != "dense" else None, sens if l.method != "dense" else None])
    t = plan.totals()
    rows.append(["TOTAL", "", "", t["params_before"], t["params_after"], t["param_ratio"],
                 t["macs_before"] / 1e6, t["macs_after"] / 1e6, None, None])
    return rows


def layer_table(plan: Plan, markdown: bool = False) -> str:
    """Per-layer table of ``plan`` (method, ranks, parameters, MACs, error, sensitivity)."""
    return format_table(LAYER_HEADER, layer_rows(plan), markdown=markdown)


def summary_row(plan: Plan) -> dict[str, Any]:
    """Headline numbers of one plan: method, ratios, accuracies (test when present, else held-out)."""
    r = plan.results or {}
    t = plan.totals()
    test = r.get("test") or {}
    last = (r.get("rounds") or [{}])[-1]
    return {
        "method": plan.method,
        "base_accuracy": test.get("base_accuracy", (r.get("holdout") or {}).get("base_accuracy")),
        "accuracy": test.get("accuracy", last.get("holdout_accuracy")),
        "accuracy_split": "test" if test else "holdout",
        "model_param_ratio": r.get("model_param_ratio"),
        "layer_param_ratio": t["param_ratio"],
        "macs_ratio": t["macs_ratio"],
    }
