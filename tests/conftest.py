"""Fixtures shared by every test directory: the tiny demo data and a CLI runner.

Directory-specific fixtures stay beside their tests (a tiny checkpoint in tests/engine, fake
installed distributions in tests/plugins).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny-cpu demo data (train and val splits), generated once for the whole session."""
    from dupl_cli.config.sources import load_settings
    from dupl_cli.plugins import DATASETS, load

    root = tmp_path_factory.mktemp("tiny") / "data"
    settings = load_settings(
        "tiny-cpu", assignments=[f"data.root={root}", "data.options.generate=true"], environ={}
    ).settings
    load(DATASETS, "demo")(settings.data, settings.data.train_split)
    return root


@pytest.fixture
def run_cli(monkeypatch):
    """``run_cli(*args)``: the click result of ``dupl ARGS`` run in-process, as one process.

    Exceptions other than the CLI's own exits propagate (``catch_exceptions=True`` keeps them in
    the result instead).
    """
    from typer.testing import CliRunner

    from dupl_cli.cli.app import app

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # a launcher's variables would make it distributed
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def invoke(*args, catch_exceptions: bool = False):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions)

    return invoke
