"""A tiny trained-shape checkpoint (random weights) on the shared demo data, built once."""

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    from dupl_cli.config.sources import load_settings
    from dupl_cli.engine.checkpoint import save_model
    from dupl_cli.models.dual import build_dual_student
    from dupl_cli.plugins import DATASETS, load

    settings = load_settings(
        "tiny-cpu", assignments=[f'data.root="{tiny_data}"', "eval.scales=[1.0, 1.5]"], environ={}
    ).settings
    adapter = load(DATASETS, "demo")(settings.data, "val")
    import torch

    torch.manual_seed(0)
    model = build_dual_student(
        settings.model, num_classes=len(adapter.classes), img_size=settings.data.crop_size
    )
    card = {
        "step": 6,
        "classes": list(adapter.classes),
        "palette": [list(c) for c in adapter.palette],
        "student": 2,
        "metrics": {"seg_s1": 1.0, "seg_s2": 2.0},
        "settings": settings.model_dump(mode="json"),
    }
    run_dir = tmp_path_factory.mktemp("engine") / "run"
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
