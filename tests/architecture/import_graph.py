"""The module-level import graph of ``dupl_cli`` read from the source (AST), and the rooms' order.

``python tests/architecture/import_graph.py`` (run by ``make lint``) prints every import circle and
every arrow between rooms that the layers of pyproject.toml do not allow, and exits 1 if there is one.
Imports inside functions are left out: they do not run at import time, so they cannot close a circle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "dupl_cli"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module and package of ``package_dir``."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package_dir.name, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _top_level_imports(tree: ast.Module):
    """Import nodes that run at import time: the module body and its if/try/with blocks, not functions."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try | ast.With):
            pending += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            pending += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    # ``from a import b`` imports module a.b when there is one, else the name b of module a
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}


def module_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level."""
    names = module_names(package_dir)
    known = set(names)
    graph = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets: set[str] = set()
        for node in _top_level_imports(tree):
            targets |= _targets(node, module, path.name == "__init__.py", known)
        graph[module] = {t for t in targets if t in known and t != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layers(pyproject: Path = ROOT / "pyproject.toml") -> list[list[str]]:
    """The rooms from the top layer down, siblings grouped, as the ``layers`` contract lists them."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    return [[room.strip() for room in layer.split("|")] for layer in contract["layers"]]


ENTRY = {PACKAGE, f"{PACKAGE}.__main__"}  # the package itself (its version) and ``python -m``: no room


def room_of(module: str) -> str | None:
    return None if module in ENTRY else module.split(".")[1]


def forbidden_arrows(graph: dict[str, set[str]], order: list[list[str]]) -> list[str]:
    """``a -> b`` for every import from a room into one at its own level (a sibling) or above it."""
    level = {room: i for i, group in enumerate(order) for room in group}
    bad = []
    for module, targets in sorted(graph.items()):
        source = room_of(module)
        for target in sorted(targets):
            dest = room_of(target)
            if source is None or dest is None or source == dest:
                continue
            if source not in level or dest not in level or level[dest] <= level[source]:
                bad.append(f"{module} -> {target}")
    return bad


def problems(package_dir: Path = ROOT / PACKAGE, order: list[list[str]] | None = None) -> list[str]:
    graph = module_graph(package_dir)
    found = [f"import circle: {' <-> '.join(group)}" for group in circles(graph)]
    arrows = forbidden_arrows(graph, order or layers())
    found += [f"arrow not allowed by the layers: {arrow}" for arrow in arrows]
    return found


if __name__ == "__main__":
    report = problems()
    print("\n".join(report) or f"{PACKAGE}: no import circle, every arrow points down")
    sys.exit(1 if report else 0)
