"""`dupl compare` puts a stage-1 run and its stage-2 run side by side, with the mIoU of the pseudo-labels
the stage-2 run learnt from (issue 25)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.sources import load_settings
from dupl_cli.data.palette import palette_for
from dupl_cli.runs.card import Card, Stage2Record
from dupl_cli.runs.compare import PSEUDO, compare
from dupl_cli.runs.run_dir import write_config

runner = CliRunner()


def _run(root: Path, name: str, scores: dict, *sets: str, stage2: Stage2Record | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    settings = load_settings("tiny-cpu", assignments=[f"train.run_name={name}", *sets], environ={}).settings
    write_config(run, settings.model_dump(mode="json"), {})
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 6, "validation": scores, "best_student": 1}) + "\n"
    )
    card = Card(["cat", "dog"], palette_for(2), settings.model_dump(mode="json"), 1, 1, step=6, stage2=stage2)
    card.write(run / "final.json")
    return run


def test_a_stage_two_run_shows_the_pseudo_label_miou_it_started_from(tmp_path):
    first = _run(tmp_path, "stage1", {"cam_s1": 60.0, "aux_cam_s1": 55.0, "seg_s1": 58.0, "seg_s2": 57.0})
    record = Stage2Record(str(tmp_path / "P"), str(first / "final.safetensors"), "train", "cam", True, 0.645)
    sets = (f'data.pseudo_labels="{tmp_path / "P"}"', "model.head=deeplabv2")
    second = _run(tmp_path, "stage2", {"seg_s1": 66.5}, *sets, stage2=record)
    result = compare([first, second])
    assert result.columns == ["cam", "aux_cam", "seg", PSEUDO]
    one, two = result.runs
    assert PSEUDO not in one.values and two.values[PSEUDO] == 64.5
    assert two.values["seg"] == 66.5 and one.values["seg"] == 58.0
    assert {"data.pseudo_labels", "model.head"} <= set(result.differing)
    shown = runner.invoke(app, ["compare", str(first), str(second)])
    assert shown.exit_code == 0, shown.output
    assert "pseudo-labels" in shown.output and "64.5" in shown.output and "66.5" in shown.output
