"""The built wheel ships the presets and entry points (not only an editable checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


# Built from a copy: a build in the checkout rewrites its egg-info while other tests read entry points.
_SKIP_ANYWHERE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".*_cache")
_SKIP_AT_TOP = {"runs", ".demo", "build", "tests"}  # outputs of the checkout (dupl_cli/runs is source)


def _skip(folder: str, names: list[str]) -> set[str]:
    skipped = set(_SKIP_ANYWHERE(folder, names))
    return skipped | (_SKIP_AT_TOP & set(names)) if Path(folder) == ROOT else skipped


def test_wheel_ships_presets_and_entry_points(tmp_path):
    env = {**os.environ, "PIP_FIND_LINKS": ""}
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheels"),
            str(source),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "wheels").glob("dupl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dupl_cli/presets/voc-vitb.toml" in names and "dupl_cli/presets/tiny-cpu.toml" in names
    assert not any(n.startswith(("tests/", "plugins/")) for n in names)
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "[dupl.backbones]" in entry_points and "vit = dupl_cli.models.backbones.vit:build" in entry_points

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        env=env,
    )
    code = (
        "import dupl_cli.config.presets as p, dupl_cli;"
        "print(dupl_cli.__file__); print(','.join(p.builtin_names())); print(p.description('voc-vitb'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(site)},
        cwd=tmp_path,
    ).stdout.splitlines()
    assert out[0].startswith(str(site)), "imported the checkout instead of the installed wheel"
    assert {"voc-vitb", "coco-vitb", "demo", "tiny-cpu"} <= set(out[1].split(","))
    assert "VOC" in out[2]
