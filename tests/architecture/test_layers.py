"""The import-linter layers contract of pyproject.toml holds, and it catches an import up or sideways."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = "rooms import only the rooms below them"


def _lint(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the repository's contracts on the ``dupl_cli`` found in ``package_parent``."""
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    args = [sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract(tmp_path):
    result = _lint(ROOT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CONTRACT} KEPT" in result.stdout


@pytest.mark.slow  # one copy of the package and one lint-imports subprocess per case
@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("method/cam.py", "dupl_cli.config.schema"),  # upward
        ("models/heads.py", "dupl_cli.data.palette"),  # sibling
        ("crf/dense.py", "dupl_cli.evaluation.metrics"),  # sibling
        ("train/trainer.py", "dupl_cli.predict.loop"),  # sibling
        ("core/errors.py", "dupl_cli.plugins.registry"),  # upward from the bottom
    ],
)
def test_a_forbidden_import_breaks_the_layers(tmp_path, module, forbidden):
    copy = tmp_path / "src" / "dupl_cli"
    shutil.copytree(ROOT / "dupl_cli", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    source = target.read_text(encoding="utf-8")
    target.write_text(source + f"\nimport {forbidden}  # noqa\n", encoding="utf-8")
    result = _lint(tmp_path / "src", tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"{CONTRACT} BROKEN" in result.stdout
    assert forbidden in result.stdout
