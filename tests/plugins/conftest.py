"""Fake installed distributions: a ``*.dist-info`` folder with ``entry_points.txt`` on ``sys.path``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """``make(name, version, entry_points={group: {name: "module:attr"}}, modules={name: source})``.

    importlib.metadata finds the distribution exactly as it finds a pip-installed one; the
    modules sit beside it and are unloaded again after the test.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(
        name: str, version: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]
    ) -> Path:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{ep} = {value}" for ep, value in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)
        return info

    yield make
    for module in created:
        sys.modules.pop(module, None)

