"""Resume warnings tell the truth (issue 26): settings are compared in the form config.toml records
them, so resuming an unchanged run prints no ``setting changed`` line and a real change still does."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.sources import load_settings
from dupl_cli.runs.run_dir import absolute_paths, changed_settings, write_config

runner = CliRunner()


def _recorded(tmp_path: Path, *assignments: str):
    resolved = load_settings("tiny-cpu", assignments=list(assignments), environ={})
    settings = absolute_paths(resolved.settings).model_dump(mode="json")
    write_config(tmp_path, settings, resolved.sources)
    return settings


@pytest.mark.parametrize(
    "assignments",
    [
        (),
        ("data.adapter=folder",),  # an adapter without options: data.options = {}
        ("method.tau_high_end=[0.5, 0.6]", "eval.checkpoint=none.safetensors"),
        ('train.run_name="x"', "data.val_list=list.txt"),
    ],
)
def test_the_recorded_config_reads_back_unchanged(tmp_path, assignments):
    settings = _recorded(tmp_path, *assignments)
    assert changed_settings(tmp_path, settings) == []


def test_a_real_change_is_reported(tmp_path):
    _recorded(tmp_path, "data.adapter=folder")
    settings = load_settings("tiny-cpu", assignments=["method.w_reg=0.07"], environ={}).settings
    lines = changed_settings(tmp_path, absolute_paths(settings).model_dump(mode="json"))
    assert "method.w_reg: 0.05 -> 0.07" in lines
    assert any(line.startswith("data.adapter: 'folder' -> 'demo'") for line in lines)
    assert any(line.startswith("data.options.size: None -> 64") for line in lines)


def _train(root: Path, tmp: Path, *extra: str):
    args = ["train", "--preset", "tiny-cpu", "--set", f"data.root={root}", "--set", "train.ckpt_every=2"]
    args += ["--set", "data.adapter=folder"]  # the demo data in the folder layout: no adapter options
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resuming_an_unchanged_run_prints_no_setting_changed(tiny_data, tmp_path):
    run = tmp_path / "run"
    _train(tiny_data, tmp_path, "--run-dir", str(run), "--max-iters", "2")
    output = _train(tiny_data, tmp_path, "--run-dir", str(run), "--resume", "--max-iters", "4")
    assert "resumed from" in output and "setting changed" not in output, output
    output = _train(tiny_data, tmp_path, "--run-dir", str(run), "--resume", "--set", "method.w_reg=0.07")
    changed = [line for line in output.splitlines() if "setting changed" in line]
    assert changed == ["warning: setting changed since the checkpoint: method.w_reg: 0.05 -> 0.07"], output
    assert "setting changed" in (run / "train.log").read_text()
