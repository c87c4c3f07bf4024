"""Imports run one way: ``mtd.methods`` and the ``mtd.layers`` modules never import each other, directly or through
a chain, nor do ``benchmarks/_bench_util.py`` and ``benchmarks/_experiment.py``.

The graph is read from the source with ``ast`` (every import statement, those inside functions too), so nothing
is imported. ``python tests/test_import_graph.py`` prints every import cycle in python/mtd and in benchmarks/.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def modules(folder: Path, prefix: str = "", recursive: bool = True) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, whether it is a package's ``__init__``) for the .py files in ``folder``."""
    found = {}
    for path in sorted(folder.rglob("*.py") if recursive else folder.glob("*.py")):
        parts = ([prefix] if prefix else []) + list(path.relative_to(folder).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of ``mods`` it imports. Importing ``a.b.c`` imports the packages ``a`` and ``a.b``
    first, so those count too, except the importer's own enclosing packages (already being imported)."""
    graph = {}
    for name, (path, is_package) in mods.items():
        package = name if is_package else name.rpartition(".")[0]
        enclosing = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        graph[name] = set()
        for target in targets:
            parts = target.split(".")
            graph[name] |= {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                            if m in mods and m not in enclosing and m != name}
    return graph


def chain(graph: dict[str, set[str]], start: str, goal: str) -> Optional[list[str]]:
    """The shortest import chain from ``start`` to ``goal`` (both included), or None."""
    came_from = {start: None}
    todo = deque([start])
    while todo:
        module = todo.popleft()
        if module == goal:
            path = [module]
            while came_from[path[-1]] is not None:
                path.append(came_from[path[-1]])
            return path[::-1]
        for nxt in sorted(graph[module]):
            if nxt not in came_from:
                came_from[nxt] = module
                todo.append(nxt)
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other (strongly connected, more than one module)."""
    groups, seen = [], set()
    for module in sorted(graph):
        if module in seen:
            continue
        group = sorted(m for m in graph if chain(graph, module, m) and chain(graph, m, module))
        seen |= set(group)
        if len(group) > 1:
            groups.append(group)
    return groups


def mutual_imports(graph: dict[str, set[str]], a: str, others: list[str]) -> list[str]:
    """For each module of ``others`` that ``a`` imports and that imports ``a`` back: both chains."""
    found = []
    for b in others:
        there, back = chain(graph, a, b), chain(graph, b, a)
        if there and back:
            found.append(f"{' -> '.join(there)} and {' -> '.join(back)}")
    return found


def test_methods_and_layers_do_not_import_each_other():
    graph = import_graph(modules(ROOT / "python" / "mtd", "mtd"))
    layers = sorted(m for m in graph if m == "mtd.layers" or m.startswith("mtd.layers."))
    assert chain(graph, "mtd.methods", "mtd.layers.cp_conv")  # the table imports the layer classes
    assert not mutual_imports(graph, "mtd.methods", layers)


def test_bench_util_and_experiment_do_not_import_each_other():
    graph = import_graph(modules(ROOT / "benchmarks", recursive=False))
    assert chain(graph, "_experiment", "_bench_util")  # the experiment runner uses the shared helpers
    assert not mutual_imports(graph, "_bench_util", ["_experiment"])


if __name__ == "__main__":
    for folder, prefix, recursive in ((ROOT / "python" / "mtd", "mtd", True), (ROOT / "benchmarks", "", False)):
        found = cycles(import_graph(modules(folder, prefix, recursive)))
        print(f"{folder.relative_to(ROOT)}: "
              + ("; ".join(f"import cycle among {', '.join(g)}" for g in found) or "no import cycle"))
