"""plugins/dupl-example-backbone, pip-installed (``make test`` installs it): listed, and trains."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

import pytest
from typer.testing import CliRunner

from dupl_cli.cli.app import app

runner = CliRunner()
INSTALL = "PIP_FIND_LINKS= .venv/bin/pip install -e plugins/dupl-example-backbone (make test does this)"


@pytest.fixture(scope="module")
def plugin_version() -> str:
    try:
        return version("dupl-example-backbone")
    except PackageNotFoundError:
        pytest.fail(f"the example plugin is not installed: {INSTALL}")


def test_listed_with_its_version(plugin_version):
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.stdout) if r["name"] == "convnext")
    assert row == {
        "name": "convnext",
        "group": "dupl.backbones",
        "value": "dupl_example_backbone.convnext:build",
        "dist": "dupl-example-backbone",
        "version": plugin_version,
        "status": "ok",
        "error": "",
        "origin": "entry point",
    }
    table = runner.invoke(app, ["plugins", "list"])
    assert "dupl-example-backbone" in table.output and plugin_version in table.output


@pytest.mark.slow
def test_tiny_cpu_training_runs_on_the_plugin_backbone(plugin_version, tiny_data, tmp_path):
    from dupl_example_backbone.convnext import ConvNeXtBackbone

    from dupl_cli.runs.checkpoint import load_model

    run = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "tiny-cpu",
        "--set",
        f"data.root={tiny_data}",
        "--set",
        f"train.runs_root={tmp_path}",
    ]
    args += ["--set", "model.backbone=convnext", "--set", "model.arch=test_convnext", "--run-dir", str(run)]
    args += ["--set", "train.max_iters=4", "--set", "method.t_seg=2", "--set", "method.t_anf=3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"A", "B", "C"} <= {r["phase"] for r in records if "phase" in r}
    model, card = load_model(run / "final.safetensors")
    assert card.settings["model"]["backbone"] == "convnext"
    assert all(isinstance(s.backbone, ConvNeXtBackbone) for s in model.students)
