"""The module-level import graph of dupl_cli (from the AST) has no circle and no arrow up or sideways
between rooms; an injected circle or arrow is seen."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from import_graph import ROOT, circles, layers, module_graph, problems


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "dupl_cli"
    shutil.copytree(ROOT / "dupl_cli", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(package: Path, module: str, line: str) -> None:
    path = package / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_package_has_no_circle_and_no_forbidden_arrow():
    assert problems() == []


def test_every_room_is_in_the_layers():
    rooms = {p.name for p in (ROOT / "dupl_cli").iterdir() if (p / "__init__.py").is_file()}
    assert rooms == {room for group in layers() for room in group}


def test_an_injected_circle_inside_a_room_is_found(tmp_path):
    package = _copy(tmp_path)
    _append(package, "config/schema.py", "from dupl_cli.config import sources  # noqa")
    found = problems(package)
    assert any(
        "import circle" in p and "dupl_cli.config.schema" in p and "dupl_cli.config.sources" in p
        for p in found
    )


def test_an_arrow_up_or_sideways_is_found(tmp_path):
    package = _copy(tmp_path)
    _append(package, "method/cam.py", "import dupl_cli.runs.checkpoint  # noqa")
    _append(package, "train/optim.py", "from dupl_cli.predict import tta  # noqa")
    found = problems(package)
    assert "arrow not allowed by the layers: dupl_cli.method.cam -> dupl_cli.runs.checkpoint" in found
    assert "arrow not allowed by the layers: dupl_cli.train.optim -> dupl_cli.predict.tta" in found


def test_imports_inside_functions_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "a").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a" / "__init__.py").write_text("from . import x\n")
    (package / "a" / "x.py").write_text("def f():\n    from pkg.a import y\n")
    (package / "a" / "y.py").write_text(
        "from .x import f\ntry:\n    from pkg import a\nexcept ImportError:\n    pass\n"
    )
    graph = module_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.a.x"}, "pkg.a.x": set(), "pkg.a.y": {"pkg.a.x", "pkg.a"}}
    assert circles(graph) == []
    graph["pkg.a.x"].add("pkg.a.y")
    assert circles(graph) == [["pkg.a", "pkg.a.x", "pkg.a.y"]]


def function_level_imports(package_dir: Path) -> list[tuple[str, int, bool]]:
    """(file, line, has a comment on or above it) for every import of a package module inside a function."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                names = [inner.module or ""] if isinstance(inner, ast.ImportFrom) else []
                names += [alias.name for alias in inner.names] if isinstance(inner, ast.Import) else []
                if any(name.split(".")[0] == package_dir.name for name in names):
                    span = range(inner.lineno - 2, inner.end_lineno)  # the line above and its own
                    said = any("#" in lines[i] for i in span)
                    found.append((path.relative_to(package_dir).as_posix(), inner.lineno, said))
    return found


def test_imports_inside_functions_are_the_clis_and_say_why():
    # only the CLI defers imports (to keep `dupl --help` free of torch), and each says so
    found = function_level_imports(ROOT / "dupl_cli")
    assert [(f, n) for f, n, _ in found if not f.startswith("cli/")] == []
    assert [(f, n) for f, n, said in found if not said] == []


def test_the_function_level_check_sees_one(tmp_path):
    package = tmp_path / "dupl_cli"
    package.mkdir()
    body = "def f():\n    from dupl_cli import b\n    import dupl_cli.c  # why\n"
    body += "    # why\n    import dupl_cli.d\n"
    (package / "a.py").write_text(body)
    assert function_level_imports(package) == [("a.py", 2, False), ("a.py", 3, True), ("a.py", 5, True)]
