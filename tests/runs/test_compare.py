"""`dupl compare` on run directories written as dupl writes them (config.toml, metrics.jsonl, cards,
eval/<tag>/metrics.json), and on one real tiny training."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.sources import load_settings
from dupl_cli.data.palette import palette_for
from dupl_cli.evaluation.metrics import metrics_from_confusion
from dupl_cli.runs.card import Card
from dupl_cli.runs.run_dir import write_config

runner = CliRunner()
CLASSES = ["background", "cat", "dog"]


def scores(cam: float, aux: float, seg: float, other: float = 1.0) -> dict[str, float]:
    """A validation record's scores: the given numbers for student 1, ``other`` for every student-2 entry."""
    return {
        "cam_s1": cam,
        "cam_s2": other,
        "aux_cam_s1": aux,
        "aux_cam_s2": other,
        "seg_s1": seg,
        "seg_s2": other,
    }


def make_run(
    root: Path, name: str, *sets: str, validations=(), card_student: int | None = 1, evals=None
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    settings = load_settings("tiny-cpu", assignments=[f"train.run_name={name}", *sets], environ={}).settings
    write_config(run, settings.model_dump(mode="json"), {})
    lines = [json.dumps({"step": 1, "loss/total": 2.0, "phase": "A"})]
    lines += [json.dumps({"step": step, "validation": v, "best_student": 2}) for step, v in validations]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if card_student is not None:
        palette = palette_for(len(CLASSES) - 1)
        card = Card(CLASSES[1:], palette, settings.model_dump(mode="json"), card_student, step=6)
        card.write(run / "final.json")
    for tag, matrix in (evals or {}).items():
        (run / "eval" / tag).mkdir(parents=True)
        payload = metrics_from_confusion(torch.tensor(matrix), CLASSES).to_json()
        (run / "eval" / tag / "metrics.json").write_text(json.dumps({"protocol": {}, **payload}))
    return run


# Rows: ground truth (bg, cat, dog); columns: prediction (bg, cat, dog, uncertain).
MATRIX = [[50, 5, 5, 0], [10, 30, 0, 0], [0, 10, 20, 0]]
# cat predicted 5 + 30 + 10 = 45 times, 15 wrongly; dog 5 + 0 + 20 = 25, 5 wrongly (background excluded).
OVER_ACT = 100 * (15 / 45 + 5 / 25) / 2


@pytest.fixture
def runs(tmp_path):
    seed0 = make_run(
        tmp_path / "a",
        "base-s0",
        validations=[(3, scores(10, 10, 10)), (6, scores(40, 30, 49))],
        evals={"val-seg": MATRIX},
    )
    seed1 = make_run(
        tmp_path / "b", "base-s1", "train.seed=1", "train.log_every=2", validations=[(6, scores(44, 32, 51))]
    )
    other = make_run(
        tmp_path / "a",
        "no-dis",
        "method.w_dis=0.0",
        validations=[(6, scores(35, 25, 45, other=60))],
        card_student=None,
    )
    empty = make_run(tmp_path / "a", "empty", "train.seed=3")
    return [seed0, seed1, other, empty]


def invoke(*args: str):
    result = runner.invoke(app, ["compare", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_groups_seeds_and_names_sources(runs, tmp_path):
    out = tmp_path / "cmp.json"
    code, stdout, _ = invoke(*map(str, runs), "--json", str(out))
    assert code == 0, stdout
    data = json.loads(out.read_text())
    assert data["differing_settings"] == ["method.w_dis", "train.seed"]  # run_name, log_every: neutral
    assert data["columns"] == ["cam", "aux_cam", "seg", "val-seg mIoU", "val-seg over-act."]
    seed0, seed1, other, empty = data["runs"]
    assert seed0["values"]["seg"] == 49 and seed0["validation_step"] == 6  # the last validation record
    assert seed0["values"]["val-seg mIoU"] == pytest.approx(
        100 * metrics_from_confusion(torch.tensor(MATRIX), CLASSES).miou
    )
    assert seed0["values"]["val-seg over-act."] == pytest.approx(OVER_ACT)
    assert (seed0["student"], seed0["student_from"]) == (1, "card")
    assert (other["student"], other["student_from"]) == (2, "validation record") and other["values"][
        "seg"
    ] == 60
    assert empty["values"] == {} and "no metrics" in empty["notes"][0]
    seeds, single = data["groups"]  # the run without metrics differs only in its seed: it joins the first
    assert seeds["runs"] == [str(runs[0]), str(runs[1]), str(runs[3])] and seeds["seeds"] == [0, 1, 3]
    assert seeds["mean"]["seg"] == pytest.approx(50) and seeds["std"]["seg"] == pytest.approx(
        statistics.stdev([49, 51])
    )
    assert (
        seeds["count"]["seg"] == 2
        and seeds["count"]["val-seg mIoU"] == 1
        and seeds["std"]["val-seg mIoU"] is None
    )
    assert single["runs"] == [str(runs[2])] and single["settings"] == {"method.w_dis": 0.0}
    assert f"note: {runs[3]}: no metrics" in stdout.replace("\n", "")


def test_table_and_csv(runs):
    code, stdout, _ = invoke(*map(str, runs[:2]), "--csv", "-")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(stdout)))  # stdout holds only the CSV
    assert [r["kind"] for r in rows] == ["run", "run", "mean_std"]
    assert rows[2]["train.seed"] == "0 1" and float(rows[2]["seg"]) == pytest.approx(50)
    assert float(rows[2]["seg std"]) == pytest.approx(statistics.stdev([49, 51])) and rows[0]["seg std"] == ""
    code, stdout, _ = invoke(*map(str, runs))
    assert code == 0
    assert "mean ± std (3 runs)" in stdout and "50.0 ± 1.4 (2 of 3)" in stdout and "26.7 (1 of 3)" in stdout


def test_unreadable_lines_are_noted_and_bad_runs_refused(runs, tmp_path):
    with open(runs[1] / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 9, "validation": {"seg_s1"')  # a write cut short by a kill
    code, stdout, _ = invoke(str(runs[1]), "--json", "-")
    data = json.loads(stdout)
    assert (
        data["runs"][0]["values"]["seg"] == 51
        and "metrics.jsonl:3: not valid JSON" in data["runs"][0]["notes"][0]
    )
    code, stdout, _ = invoke(str(runs[0]), "--eval", "val-seg-ms-crf", "--json", "-")
    assert "no eval/val-seg-ms-crf/metrics.json" in json.loads(stdout)["runs"][0]["notes"]
    (tmp_path / "bare").mkdir()
    for args, expected in (
        ([str(tmp_path / "missing")], "no such run directory"),
        ([str(tmp_path / "bare")], "not a run directory (no config.toml, final.json or best.json)"),
        ([str(runs[0]), str(runs[0])], "given more than once"),
    ):
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 2 and expected in result.output and len(result.output.splitlines()) == 1


@pytest.mark.slow
def test_real_tiny_training_compares(tmp_path):
    from dupl_cli.plugins import DATASETS, load

    tiny_data = tmp_path / "data"
    generate = [f"data.root={tiny_data}", "data.options.generate=true"]
    settings = load_settings("tiny-cpu", assignments=generate, environ={}).settings
    load(DATASETS, "demo")(settings.data, settings.data.train_split)  # generates the demo set
    run = tmp_path / "real"
    result = runner.invoke(
        app, ["train", "--preset", "tiny-cpu", "--set", f"data.root={tiny_data}", "--run-dir", str(run)]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(run), "--set", f"data.root={tiny_data}"])
    assert result.exit_code == 0, result.output
    twin = tmp_path / "real-seed1"  # the same run recorded under another seed
    shutil.copytree(run, twin, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    head, train = (twin / "config.toml").read_text().split("[train]\n", 1)
    assert "\nseed = 0" in "\n" + train
    (twin / "config.toml").write_text(
        head + "[train]\n" + ("\n" + train).replace("\nseed = 0", "\nseed = 1", 1)[1:]
    )
    code, stdout, _ = invoke(str(run), str(twin), "--json", "-")
    assert code == 0, stdout
    data = json.loads(stdout)
    record = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"validation"' in line
    ][-1]
    student = json.loads((run / "final.json").read_text())["student"]
    evaluation = json.loads((run / "eval" / "val-seg" / "metrics.json").read_text())
    values = data["runs"][0]["values"]
    assert (
        values["seg"] == record["validation"][f"seg_s{student}"]
        and values["cam"] == record["validation"][f"cam_s{student}"]
    )
    assert values["val-seg mIoU"] == pytest.approx(100 * evaluation["miou"])
    assert data["differing_settings"] == ["train.seed"] and len(data["groups"]) == 1
    assert data["groups"][0]["std"]["seg"] == 0.0 and data["groups"][0]["mean"]["seg"] == values["seg"]
