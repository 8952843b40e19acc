"""Issue 26: a diverging `dupl train` is stopped, never saved; set-up failures never leave run.json
saying running."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dupl_cli.runs.run_dir import checkpoint_dirs


def _tiny(root, tmp_path, *extra):
    return ("train", "--preset", "tiny-cpu", "--set", f"data.root={root}",
            "--set", f"train.runs_root={tmp_path / 'runs'}", *extra)  # fmt: skip


def _non_finite(checkpoint) -> list[str]:
    bad = []
    for file in checkpoint.glob("*.safetensors"):
        bad += [
            k
            for k, v in load_file(str(file)).items()
            if v.is_floating_point() and not torch.isfinite(v).all()
        ]
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=False)
    for entry in optimizer["state"].values():
        bad += [
            k
            for k, v in entry.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
        ]
    return bad


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_diverging_run_stops_in_one_line_and_saves_nothing_poisoned(tiny_data, tmp_path, run_cli):
    """train.lr = 1e30: the first step explodes the weights, every later step is skipped. The run
    exits non-zero with one line (no traceback) naming the step, train.lr and the last good
    checkpoint, which is still there (keep_checkpoints = 1: never rotated out by a bad one); no
    checkpoint was written at or after the first skipped step, none holds a non-finite tensor, and
    there is no final or best model."""
    run = tmp_path / "run"
    result = run_cli(*_tiny(tiny_data, tmp_path, "--run-dir", run, "--set", "train.lr=1e30",
                            "--set", "train.ckpt_every=1", "--set", "train.keep_checkpoints=1",
                            "--set", "train.select=best-val", "--set", "train.val_every=2"))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "training diverged" in errors[0] and "train.lr = 1e+30" in errors[0], errors[0]
    skipped = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    first_bad = min(
        int(line.split("step ")[1].split(":")[0])
        for line in result.output.splitlines()
        if line.startswith("warning: step") and "step skipped" in line
    )  # the guard's step index: the step that ends at state.step = first_bad + 1
    kept = checkpoint_dirs(run)
    assert kept, skipped
    assert all(step <= first_bad for step, _ in kept), (kept, first_bad)
    assert f"last good checkpoint: {kept[-1][1]}" in errors[0]
    for _, checkpoint in kept:
        assert _non_finite(checkpoint) == [], checkpoint
    assert not (run / "final.safetensors").exists() and not (run / "best.safetensors").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "crashed"


@pytest.mark.timeout(300)
def test_a_failed_data_check_never_leaves_run_json_running(tmp_path, run_cli):
    """The data checks run before the run is marked running: a missing data root stops in one line
    and run.json (if any) does not say running."""
    run = tmp_path / "run"
    result = run_cli(*_tiny(tmp_path / "missing", tmp_path, "--run-dir", run))
    assert result.exit_code != 0 and "Traceback" not in result.output
    info = run / "run.json"
    assert not info.exists() or json.loads(info.read_text())["status"] != "running", info.read_text()


@pytest.mark.timeout(300)
def test_a_set_up_failure_after_the_start_marks_the_run_crashed(tiny_data, tmp_path, run_cli, monkeypatch):
    """A failure between marking the run running and the loop (here: building the optimiser) leaves
    run.json saying crashed, with the error."""
    from dupl_cli.train import trainer

    def broken(model, train):
        raise RuntimeError("optimizer broke")

    monkeypatch.setattr(trainer, "build_optimizer", broken)
    run = tmp_path / "run"
    result = run_cli(*_tiny(tiny_data, tmp_path, "--run-dir", run), catch_exceptions=True)
    assert result.exit_code != 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "crashed" and "optimizer broke" in info["error"], info


def test_the_stop_blames_only_settings_the_run_has():
    """Stage 1's line names its loss weights; a stage-2 run (no such weights) names the LR alone."""
    from dupl_cli.config.sources import load_settings
    from dupl_cli.train.divergence import diverged, loss_weights

    stage1 = load_settings("demo", assignments=[], environ={}).settings
    stage2 = load_settings("demo-stage2", assignments=["data.pseudo_labels=/p"], environ={}).settings
    assert loss_weights(stage1) == ("method.w_ptc", "method.w_dis", "method.w_seg", "method.w_reg")
    assert loss_weights(stage2) == ()
    one = str(diverged(7, "x", stage1.train, None, loss_weights(stage1)))
    two = str(diverged(7, "x", stage2.train, None, loss_weights(stage2)))
    assert "a loss weight too large (method.w_ptc" in one and "train.lr = " in one
    assert "method.w_" not in two and "loss weight" not in two and "train.lr = " in two
