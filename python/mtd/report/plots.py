"""PNG plots (matplotlib, Agg backend): accuracy vs compression, and per-layer methods/ranks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..planner.plan import Plan
from ..utils import atomic_write

METHOD_COLOURS = {"dense": "#9e9e9e", "cp": "#1f77b4", "cp4": "#17becf", "tucker": "#ff7f0e", "svd": "#2ca02c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (a killed run leaves the old image or none) and close it."""
    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_write(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def plot_accuracy_vs_ratio(points: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Scatter of accuracy vs parameter compression ratio, one series per method.

    ``points``: dicts with ``method``, ``model_param_ratio`` and ``accuracy`` (points without an
    accuracy are skipped); a ``base_accuracy`` draws the uncompressed reference line.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    by_method: dict[str, list] = {}
    for p in points:
        if p.get("accuracy") is not None and p.get("model_param_ratio"):
            by_method.setdefault(p["method"], []).append((p["model_param_ratio"], p["accuracy"]))
    for method, pts in sorted(by_method.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=method)
    bases = [p["base_accuracy"] for p in points if p.get("base_accuracy") is not None]
    if bases:
        ax.axhline(bases[0], color="k", linestyle="--", linewidth=1, label="uncompressed")
    ax.set_xscale("log")
    ax.set_xlabel("parameter compression ratio (x)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy vs compression")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def plot_layer_methods(plan: Plan, path: str | os.PathLike) -> Path:
    """Bar chart of per-layer parameter ratio, coloured by method and labelled with the ranks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(plan.layers)), 4))
    names = [l.name for l in plan.layers]
    ratios = [l.params_before / max(l.params_after, 1) for l in plan.layers]
    colours = [METHOD_COLOURS.get(l.method, "k") for l in plan.layers]
    bars = ax.bar(range(len(names)), ratios, color=colours)
    for bar, l in zip(bars, plan.layers):
        label = l.method + ("\n" + "x".join(map(str, l.ranks)) if l.ranks else "")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("layer parameter ratio (x)")
    ax.set_title(f"per-layer methods and ranks ({plan.method})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in METHOD_COLOURS.values()]
    ax.legend(handles, list(METHOD_COLOURS), fontsize=7)
    return _save(plt, fig, path)
