"""Plugins for tests: fake installed distributions on sys.path, and in-process registrations."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from dupl_cli import plugins


@pytest.fixture
def fake_distribution(tmp_path):
    """``make(name, version, entry_points={group: {name: "module:attr"}}, modules={name: source})``.

    importlib.metadata finds the distribution exactly as it finds a pip-installed one; the
    modules sit beside it and are unloaded again after the test. ``entry_points`` may also be
    the raw bytes of ``entry_points.txt`` (to write a malformed one), ``metadata`` those of METADATA.
    """
    site = tmp_path / "site"
    site.mkdir()
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    created: list[str] = []

    def make(
        name: str,
        version: str,
        entry_points: dict[str, dict[str, str]] | bytes,
        modules: dict[str, str] | None = None,
        metadata: bytes | None = None,
    ) -> Path:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        default = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        (info / "METADATA").write_bytes(default if metadata is None else metadata)
        if isinstance(entry_points, bytes):
            (info / "entry_points.txt").write_bytes(entry_points)
        else:
            lines = []
            for group, eps in entry_points.items():
                lines.append(f"[{group}]")
                lines += [f"{ep} = {value}" for ep, value in eps.items()]
            (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)
        plugins.refresh()
        return info

    yield make
    for module in created:
        sys.modules.pop(module, None)
    sys.path.remove(str(site))
    plugins.refresh()


@pytest.fixture
def registered():
    """``registered(group, name, factory, **kw)``: an in-process plugin removed after the test."""
    added: list[tuple[str, str]] = []

    def add(group: str, name: str, factory, **kwargs):
        plugins.register(group, name, factory, **kwargs)
        added.append((group, name))
        return factory

    yield add
    for group, name in added:
        plugins.unregister(group, name)
