"""Stage 2 end to end (issue 25): pseudo-labels of a stage-1 checkpoint -> `dupl train --preset demo-stage2`
-> evaluate, infer, export, runs, compare; bit-exact resume; refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.runs.run_dir import checkpoint_dirs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

runner = CliRunner()


def invoke(*args, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def pseudo(tiny_run, tmp_path_factory) -> Path:
    """CAM pseudo-labels (with confidence, scored) of the tiny stage-1 checkpoint's training split."""
    run_dir, _, _ = tiny_run
    out = tmp_path_factory.mktemp("pseudo") / "P"
    invoke("pseudo-label", run_dir, "--out", out, "--split", "train", "--confidence", "--evaluate")
    return out


def stage2_args(data: Path, pseudo: Path, run: Path, *extra: str) -> list[str]:
    """demo-stage2 shrunk to the tiny data: 64 px crops, 6 iterations, checkpoints every 3."""
    sets = [
        f"data.root={data}",
        f"data.pseudo_labels={pseudo}",
        "data.crop_size=64",
        "data.num_workers=0",
        "train.max_iters=6",
        "train.batch_size=2",
        "train.reference_batch=2",
        "train.warmup_iters=2",
        "train.val_every=3",
        "train.ckpt_every=3",
        "train.log_every=1",
        f"train.runs_root={run.parent / 'runs'}",
        "method.anf.min_pixels=10",
    ]
    return [
        "train",
        "--preset",
        "demo-stage2",
        *(a for s in sets for a in ("--set", s)),
        "--run-dir",
        run,
        *extra,
    ]


def test_stage2_trains_a_segmenter_and_every_command_reads_it(tiny_run, pseudo, tmp_path):
    run_dir, data, _ = tiny_run
    run = tmp_path / "R"
    out = invoke(*stage2_args(data, pseudo, run))
    assert "phase S2" in (run / "train.log").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validations = [r["validation"] for r in records if "validation" in r]
    assert validations and set(validations[-1]) == {"seg_s1"}  # the ground truth of val: no CAMs
    card = json.loads((run / "final.json").read_text())
    assert card["students"] == 1 and card["settings"]["model"]["head"] == "deeplabv2"
    meta = json.loads((pseudo / "pseudo_labels.json").read_text())
    assert card["stage2"]["pseudo_miou"] == meta["metrics"]["miou"]
    assert card["stage2"]["made_from"] == str((run_dir / "best.safetensors").resolve())
    assert "the only" in card["student_rule"], out.output
    # evaluate (single and multi-scale + CRF), infer, submit-style prediction, runs, compare
    evaluated = invoke("evaluate", run, "--out", tmp_path / "ev")
    assert "mIoU" in evaluated.output
    invoke("evaluate", run, "--multiscale", "--crf", "--max-images", "2", "--out", tmp_path / "ev-ms")
    cams = invoke("evaluate", run, "--cams", ok=False)
    assert cams.exit_code != 0 and "no CAMs" in " ".join(cams.output.split())
    masks = tmp_path / "masks"
    images = sorted((data / "images").glob("val_*"))[:2]
    invoke("infer", run, *images, "--out", masks)
    assert len(list(masks.glob("*.png"))) == 2
    listed = invoke("runs", "list", "--set", f"train.runs_root={tmp_path}")
    assert "R" in listed.output
    invoke("runs", "show", run)
    compared = json.loads(invoke("compare", run_dir, run, "--json", "-").stdout)
    assert "pseudo-labels" in compared["columns"]
    assert compared["runs"][1]["values"]["pseudo-labels"] == pytest.approx(100 * meta["metrics"]["miou"])
    assert "pseudo-labels" not in compared["runs"][0]["values"]


def test_stage2_resume_is_bit_exact(tiny_run, pseudo, tmp_path):
    _, data, _ = tiny_run
    exact = [
        "--set",
        "train.deterministic=true",
        "--set",
        "method.stage2_anf=true",
        "--set",
        "method.stage2_anf_start=4",
    ]
    exact += ["--set", "method.stage2_weights=confidence"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    invoke(*stage2_args(data, pseudo, straight), *exact)
    invoke(*stage2_args(data, pseudo, split), "--max-iters", "3", *exact)
    assert [s for s, _ in checkpoint_dirs(split)] == [3] and not (split / "final.safetensors").exists()
    resumed = invoke(*stage2_args(data, pseudo, split), "--resume", *exact)
    assert "resumed from" in resumed.output
    a = load_file(str(straight / "final.safetensors"))
    b = load_file(str(split / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_refusals_are_one_line(tiny_run, pseudo, tmp_path):
    _, data, _ = tiny_run
    no_labels = invoke(
        "train", "--preset", "demo-stage2", "--set", f"data.root={data}", "--dry-run", ok=False
    )
    assert no_labels.exit_code == 2 and "set data.pseudo_labels" in " ".join(no_labels.output.split())
    other = invoke(*stage2_args(data, pseudo, tmp_path / "R"), "--set", "data.train_split=val", ok=False)
    text = " ".join(other.output.split())
    assert other.exit_code != 0 and "made from split 'train', but data.train_split is 'val'" in text
    measured = invoke(
        *stage2_args(data, pseudo, tmp_path / "Q"), "--set", "train.label_quality=true", ok=False
    )
    assert measured.exit_code != 0 and "train.label_quality measures stage 1's own labels" in measured.output
