"""Every function body in dupl_cli fits on a screen: at most 60 lines (a signature does not count)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dupl_cli"
MAX_LINES = 60


def long_functions(folder: Path, limit: int) -> list[str]:
    """``file:line name (n lines)`` for every function or method of ``folder`` whose body (docstring
    included, signature and decorators not) is longer than ``limit`` lines."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.body[0].lineno + 1
                if lines > limit:
                    name = path.relative_to(folder).as_posix()
                    found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_body_is_longer_than_60_lines():
    assert long_functions(PACKAGE, MAX_LINES) == []


def test_the_check_sees_a_long_body_and_not_a_long_signature(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES + 1))
    (tmp_path / "long.py").write_text(f"def run():\n{body}\n", encoding="utf-8")
    params = "\n".join(f"    a{i}: int = {i}," for i in range(MAX_LINES))
    (tmp_path / "wide.py").write_text(f"def wide(\n{params}\n):\n    return 1\n", encoding="utf-8")
    assert long_functions(tmp_path, MAX_LINES) == [f"long.py:1 run ({MAX_LINES + 1} lines)"]
