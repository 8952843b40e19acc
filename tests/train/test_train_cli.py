"""`dupl train` end to end on tiny-cpu: phases, run directory, resume exactness, kill, guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.runs.checkpoint import load_model
from dupl_cli.runs.run_dir import checkpoint_dirs, read_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

runner = CliRunner()


def tiny_args(root: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--preset",
        "tiny-cpu",
        "--set",
        f"data.root={root}",
        "--set",
        f"train.runs_root={tmp / 'runs'}",
        *extra,
    ]


def invoke(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_tiny_cpu_runs_all_three_phases(tiny_data, tmp_path):
    run = tmp_path / "run"
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(run), "--set", "train.label_quality=true"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records if "phase" in r]
    assert {"A", "B", "C"} <= set(phases)
    last = [r for r in records if "phase" in r][-1]
    assert {
        "loss/cls",
        "loss/ptc",
        "loss/dis",
        "loss/seg",
        "loss/reg",
        "lr",
        "tau_h",
        "noise_share",
        "images_per_s",
    } <= set(last)
    # train.label_quality: the labels scored against the ground truth from phase B, the noise filter
    # and the consistency mask in phase C (a ratio with no pixel, e.g. an empty mask, is left out)
    quality = {r["phase"]: {k for k in r if k.startswith("quality/")} for r in records if "phase" in r}
    labels = {f"quality/{k}" for k in ("label_acc", "label_fg_iou", "learned_acc", "learned_fg_iou")}
    assert quality["A"] == set() and {"quality/label_acc", "quality/learned_acc"} <= quality["B"] <= labels
    assert quality["B"] | {"quality/noise_recall", "quality/reg_share"} <= quality["C"]
    assert all(0 <= r[k] <= 1 for r in records for k in r if k.startswith("quality/"))
    assert not any("#" in k for r in records for k in r)  # the counts become ratios
    assert any("validation" in r for r in records)
    # Rotating checkpoints (every 3 steps) and the inference checkpoints with cards.
    assert [step for step, _ in checkpoint_dirs(run)] == [3, 6]
    assert read_state(run / "checkpoints" / "step_6")["step"] == 6
    # Honest selection by default: the final weights, student 1, no best-by-validation file.
    card = json.loads((run / "final.json").read_text())
    assert card["format"] == "dupl-checkpoint/1" and (card["student"], card["selection"]) == (1, "final")
    assert "no pixel label" in card["student_rule"] and card["metrics"]  # the last validation's scores
    assert card["classes"] and len(card["palette"]) == len(card["classes"]) + 1
    assert not (run / "best.safetensors").exists()
    assert (run / "config.toml").is_file() and (run / "train.log").is_file()
    assert not list((run / "checkpoints").glob(".tmp*"))


def test_checkpoint_cards_load_without_pickle(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    invoke(
        tiny_args(
            tiny_data,
            tmp_path,
            "--run-dir",
            str(run),
            "--set",
            "train.max_iters=2",
            "--set",
            "method.t_seg=1",
            "--set",
            "method.t_anf=2",
        )
    )
    import pickle

    def refuse(*_a, **_k):
        raise AssertionError("pickle used to load a checkpoint")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, card = load_model(run / "final.safetensors")
    state = load_file(str(run / "final.safetensors"))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert card.step == 2


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_resume_is_exact(tiny_data, tmp_path):
    common = ["--set", "train.deterministic=true", "--set", "train.ckpt_every=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(straight), *common))
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(split), "--max-iters", "3", *common))
    assert [s for s, _ in checkpoint_dirs(split)] == [3] and not (split / "final.safetensors").exists()
    resumed = invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(split), "--resume", *common))
    checkpoint = split / "checkpoints" / "step_3"
    assert f"resumed from {checkpoint} at step 3" in resumed.output
    assert (split / "train.log").read_text().count("resumed from") == 1
    a, b = _weights(straight / "checkpoints" / "step_6"), _weights(split / "checkpoints" / "step_6")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_existing_run_needs_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(run), "--max-iters", "3"))
    again = runner.invoke(app, tiny_args(tiny_data, tmp_path, "--run-dir", str(run)))
    assert again.exit_code == 2 and "already holds a run" in again.output


def test_resume_reports_changed_settings(tiny_data, tmp_path):
    run = tmp_path / "run"
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(run), "--max-iters", "3"))
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(run), "--resume", "--set", "method.w_reg=0.07"))
    assert "method.w_reg: 0.05 -> 0.07" in (run / "train.log").read_text()


def test_killed_run_resumes_from_last_checkpoint(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(
        tiny_data,
        tmp_path,
        "--run-dir",
        str(run),
        "--set",
        "train.max_iters=40",
        "--set",
        "train.ckpt_every=2",
        "--set",
        "train.val_every=1000",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dupl_cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(checkpoint_dirs(run)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = checkpoint_dirs(run)[-1][0]
    assert before < 40
    result = subprocess.run(
        [sys.executable, "-m", "dupl_cli", *args, "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "resumed from" in log
    assert read_state(run / "checkpoints" / "step_40")["step"] == 40
    assert (run / "final.safetensors").is_file()


def test_non_finite_loss_is_skipped_then_stops(tiny_data, tmp_path, monkeypatch):
    import dupl_cli.method.step as step_module

    real = step_module.training_step

    def poisoned(model, batch, t, settings, **kw):
        result = real(model, batch, t, settings, **kw)
        if t >= 3:  # steps 4.. give NaN in the classification term
            terms = dict(result.terms, cls=torch.tensor(float("nan")))
            return result._replace(loss=result.loss * float("nan"), terms=terms)
        return result

    monkeypatch.setattr(step_module, "training_step", poisoned)
    run = tmp_path / "run"
    args = tiny_args(
        tiny_data,
        tmp_path,
        "--run-dir",
        str(run),
        "--set",
        "train.max_bad_steps=2",
        "--set",
        "train.ckpt_every=3",
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "training diverged (2 non-finite steps in a row, last: cls)" in result.output
    assert f"last good checkpoint: {run / 'checkpoints' / 'step_3'}" in result.output
    log = (run / "train.log").read_text()
    assert "non-finite loss (cls); step skipped" in log
    # The checkpoint at step 3 is intact and its weights are finite.
    assert [s for s, _ in checkpoint_dirs(run)] == [3]
    assert all(torch.isfinite(v).all() for v in _weights(run / "checkpoints" / "step_3").values())


def test_dry_run_writes_nothing(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(tiny_args(tiny_data, tmp_path, "--dry-run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert "parameters per_student_trainable" in result.output
    for phase in ("A", "B", "C"):
        assert f"dry run: phase {phase}" in result.output


def test_label_quality_needs_masks_on_the_training_split(tmp_path):
    import shutil

    from dupl_cli.data.demo import write_demo

    root = write_demo(tmp_path / "d", size=48, n_train=4, n_val=2)
    shutil.rmtree(root / "masks")
    sets = ["data.adapter=folder", f"data.root={root}", "train.label_quality=true"]
    result = runner.invoke(
        app, [*tiny_args(root, tmp_path, "--dry-run"), *(a for x in sets for a in ("--set", x))]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert (
        lines[0].startswith("error: train.label_quality: the training split 'train_aug'")
        and "no masks" in lines[0]
    )


def test_diff_aug_trains_from_the_loaders_two_views(tiny_data, tmp_path):
    # Table 6: the trainer asks the loader for a second view; the step fails on a batch without one.
    result = invoke(tiny_args(tiny_data, tmp_path, "--dry-run", "--set", "method.diff_aug=true"))
    for phase in ("A", "B", "C"):
        assert f"dry run: phase {phase}" in result.output
    assert "diff_aug = true" in result.output


@pytest.mark.parametrize(
    ("bad", "expected", "code"),
    [
        (
            ["data.adapter=folder", "data.root={tmp}/missing"],
            "{tmp}/missing: data root for the 'folder' adapter",
            1,
        ),
        (["model.arch=vit_nope"], "timm has no model named 'vit_nope'", 2),
    ],
)
def test_bad_setup_is_one_line(tiny_data, tmp_path, bad, expected, code):
    sets = [arg for item in bad for arg in ("--set", item.format(tmp=tmp_path))]
    result = runner.invoke(app, [*tiny_args(tiny_data, tmp_path), *sets])
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert expected.format(tmp=tmp_path) in lines[0]


def test_tensorboard_tracker_writes_scalars_and_image_grids(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(run), "--set", "train.tracker=tensorboard"))
    files = list((run / "events").rglob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    assert "loss/total" in acc.Tags()["scalars"] and "val/seg_s1" in acc.Tags()["scalars"]
    assert any("grid" in tag for tag in acc.Tags()["images"])


def test_best_by_validation_is_explicit_and_every_report_states_it(tiny_data, tmp_path):
    short = [
        "--set",
        "train.max_iters=2",
        "--set",
        "method.t_seg=1",
        "--set",
        "method.t_anf=2",
        "--set",
        "train.val_every=1",
    ]
    final, best = tmp_path / "final", tmp_path / "best"
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(final), *short))
    invoke(tiny_args(tiny_data, tmp_path, "--run-dir", str(best), *short, "--set", "train.select=best-val"))
    card = json.loads((best / "best.json").read_text())
    assert card["selection"] == "best-val" and "'val'" in card["student_rule"]
    assert json.loads((best / "final.json").read_text())["selection"] == "best-val"
    records = {}
    for run in (final, best):
        out = tmp_path / f"eval_{run.name}"
        result = invoke(["evaluate", str(run), "--out", str(out), "--set", "eval.max_images=1"])
        records[run.name] = (result.output, json.loads((out / "metrics.json").read_text()))
    output, metrics = records["final"]
    assert metrics["selection"]["checkpoint"] == "final" and not metrics["selection"]["chosen_on_this_split"]
    assert "final checkpoint (step 2)" in metrics["protocol"]["selection"] and "final checkpoint" in output
    output, metrics = records["best"]
    assert metrics["selection"]["checkpoint"] == "best-val" and metrics["selection"]["chosen_on_this_split"]
    assert "optimistic on 'val'" in metrics["protocol"]["selection"] and "optimistic" in output


def test_one_student_baseline_trains_and_evaluates(tiny_data, tmp_path):
    # The ablation-baseline switches on tiny-cpu: one student end to end, card and validation included.
    switches = ["method.students=1", "method.use_dis=false", "method.use_dta=false", "method.use_anf=false",
                "method.use_reg=false", "train.max_iters=3", "train.val_every=3"]  # fmt: skip
    run = tmp_path / "run"
    invoke(
        tiny_args(tiny_data, tmp_path, "--run-dir", str(run), *[a for s in switches for a in ("--set", s)])
    )
    card = json.loads((run / "final.json").read_text())
    assert (card["students"], card["student"], card["student_rule"]) == (1, 1, "the only student")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "phase" in r][-1]
    assert last["phase"] == "B" and last["loss/seg"] > 0 and last["loss/dis"] == 0 and last["loss/reg"] == 0
    assert "loss/seg_1" in last and "loss/seg_2" not in last and last["tau_h"] == pytest.approx(0.70)
    assert set(next(r for r in records if "validation" in r)["validation"]) == {
        "cam_s1",
        "aux_cam_s1",
        "seg_s1",
    }
    model, _ = load_model(run / "final.safetensors")
    assert len(model.students) == 1
    out = tmp_path / "eval"
    invoke(["evaluate", str(run), "--out", str(out), "--set", "eval.max_images=1"])
    assert json.loads((out / "metrics.json").read_text())["protocol"]["student"].startswith(
        "student 1 (the only"
    )
