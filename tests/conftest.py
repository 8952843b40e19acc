"""Fixtures shared by every test directory: the tiny demo data and a CLI runner.

A tiny trained-shape checkpoint (random weights) on the demo data is shared by the prediction, task,
run and evaluation tests; directory-specific fixtures stay beside their tests (fake installed
distributions in tests/plugins).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import release_fixture
import release_trajectory


def pytest_configure(config):
    # a mistyped fixture folder stops the run at once
    reason = release_fixture.invalid_env_reason() or release_trajectory.invalid_env_reason()
    if reason:
        raise pytest.UsageError(reason)


def pytest_generate_tests(metafunc):
    if "release_set" in metafunc.fixturenames:
        sets = release_fixture.set_dirs()
        metafunc.parametrize("release_set", sets, ids=[s.name for s in sets], indirect=True, scope="module")


@pytest.fixture(scope="module")
def release_set(request) -> Path:
    """One recorded release step set (each test using it runs once per set), made the active one."""
    release_fixture.use(request.param)
    return request.param


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


@pytest.fixture
def run_worker():
    """``run_worker(script, *args, timeout=...)``: run a worker script (e.g. a two-process gloo run) in
    a fresh interpreter on one intra-op thread per process and assert it exits 0."""

    def run(script: Path, *args, timeout: float) -> None:
        result = subprocess.run(
            [sys.executable, str(script), *(str(a) for a in args)],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """A tiny trained-shape checkpoint (random weights) on the shared demo data, built once."""
    from dupl_cli.config.sources import load_settings
    from dupl_cli.models.dual import build_dual_student
    from dupl_cli.plugins import DATASETS, load
    from dupl_cli.runs.card import Card
    from dupl_cli.runs.checkpoint import save_model

    settings = load_settings(
        "tiny-cpu", assignments=[f'data.root="{tiny_data}"', "eval.scales=[1.0, 1.5]"], environ={}
    ).settings
    adapter = load(DATASETS, "demo")(settings.data, "val")
    import torch

    torch.manual_seed(0)
    model = build_dual_student(
        settings.model, num_classes=len(adapter.classes), img_size=settings.data.crop_size
    )
    card = Card(
        classes=list(adapter.classes),
        palette=list(adapter.palette),
        settings=settings.model_dump(mode="json"),
        student=2,
        step=6,
        metrics={"seg_s1": 1.0, "seg_s2": 2.0},
    )
    run_dir = tmp_path_factory.mktemp("checkpoint") / "run"
    save_model(run_dir / "best", model, card)
    return run_dir, tiny_data, settings


@pytest.fixture
def cli(tiny_run, run_cli):
    """Invoke the CLI with the tiny run (the card's settings are used, data root included)."""
    run_dir, data_root, settings = tiny_run

    def invoke(*args):
        return run_cli(*args)

    invoke.run_dir = run_dir
    invoke.data_root = data_root
    invoke.settings = settings
    return invoke
