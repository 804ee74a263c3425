"""The package's import graph has no cycle: a module is importable on its own, in any order, and what two
modules share lives in a third (cvmf_ray/values.py). Read from the source with `ast`, imports inside functions
included: a deferred import still ties the two modules together."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "cvmf_ray"  # a namespace package: no cvmf_ray.__file__


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name; a package by its own name (its __init__.py)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports: `from a.b import c` is a.b.c where that is a module, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: anchored at the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    inside = set()
    for target in targets:
        while target and target not in known:  # the module that holds the name; outside the package, none
            target = target.rpartition(".")[0]
        if target and target != name:
            inside.add(target)
    return inside


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each strongly connected component larger than one (Tarjan): each lies on a cycle."""
    order, low, stack, found = {}, {}, [], []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


def test_no_import_cycle_between_cvmf_ray_modules():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert graph["cvmf_ray.config"] and "cvmf_ray.methods" in graph["cvmf_ray.config"]  # the graph is read
    assert cycles(graph) == []


def test_a_cycle_is_found():
    """The check is live: the cycle this test guards against, and one through a third module."""
    assert cycles({"config": {"methods"}, "methods": {"config"}}) == [["config", "methods"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
