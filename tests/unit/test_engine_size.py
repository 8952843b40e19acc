"""The engine orchestrates in short functions: none in dupl_cli/engine is longer than 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "dupl_cli" / "engine"
MAX_LINES = 60


def long_functions(folder: Path, limit: int) -> list[str]:
    """``file:line name (n lines)`` for every function or method of ``folder`` longer than ``limit``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_engine_function_is_longer_than_60_lines():
    assert long_functions(ENGINE, MAX_LINES) == []


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def run():\n{body}\n", encoding="utf-8")
    (tmp_path / "short.py").write_text("def ok():\n    return 1\n", encoding="utf-8")
    assert long_functions(tmp_path, MAX_LINES) == [f"long.py:1 run ({MAX_LINES + 1} lines)"]
