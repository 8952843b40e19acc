from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny-cpu demo data, generated once for the whole session."""
    from dupl_cli.config.sources import load_settings
    from dupl_cli.plugins import DATASETS, load

    root = tmp_path_factory.mktemp("tiny") / "data"
    settings = load_settings("tiny-cpu", assignments=[f"data.root={root}"], environ={}).settings
    load(DATASETS, "demo")(settings.data, settings.data.train_split)
    return root

