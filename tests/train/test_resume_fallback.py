"""Resume falls back past a corrupt newest checkpoint and names hostile files in one line (17.8)."""

from __future__ import annotations

import pickle
import shutil

import pytest
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.runs.run_dir import checkpoint_dirs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

runner = CliRunner()


class Hostile:
    def __reduce__(self):
        return (print, ("unpickled hostile code",))


def _args(root, run, *extra):
    return ["train", "--preset", "tiny-cpu", "--set", f"data.root={root}", "--run-dir", str(run),
            "--set", "train.max_iters=9", "--set", "train.val_every=1000", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_data):
    run = tmp_path_factory.mktemp("resume") / "run"
    result = runner.invoke(app, _args(tiny_data, run, "--max-iters", "6"))
    assert result.exit_code == 0, result.output
    assert [s for s, _ in checkpoint_dirs(run)] == [3, 6]
    return run


def _copy(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    return run


def test_corrupt_newest_checkpoint_falls_back_and_says_so(stopped_run, tiny_data, tmp_path):
    run = _copy(stopped_run, tmp_path)
    model = run / "checkpoints" / "step_6" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])  # truncated by a full disk
    result = runner.invoke(app, _args(tiny_data, run, "--resume"))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    log = (run / "train.log").read_text()
    assert f"cannot resume from {run / 'checkpoints' / 'step_6'}: " in log
    assert f"fell back to {run / 'checkpoints' / 'step_3'} (step 3)" in log
    assert (run / "checkpoints" / "unusable_step_6").is_dir()
    assert (run / "final.safetensors").is_file()


def test_hostile_files_are_refused_in_one_line(stopped_run, tiny_data, tmp_path):
    run = _copy(stopped_run, tmp_path)
    for step in (3, 6):
        (run / "checkpoints" / f"step_{step}" / "optimizer.bin").write_bytes(pickle.dumps(Hostile()))
    result = runner.invoke(app, _args(tiny_data, run, "--resume"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"{run}: no checkpoint can be resumed" in lines[0]
    assert "not plain tensors (refused" in lines[0]
    assert "weights_only=False" not in result.output and "unpickled hostile code" not in result.output


def test_hostile_rng_state_is_reported(stopped_run, tiny_data, tmp_path):
    run = _copy(stopped_run, tmp_path)
    rng = run / "checkpoints" / "step_6" / "random_states_0.pkl"
    rng.write_bytes(pickle.dumps(Hostile()))
    result = runner.invoke(app, _args(tiny_data, run, "--resume"))
    assert result.exit_code == 0, result.output
    assert "unpickled hostile code" not in result.output
    log = (run / "train.log").read_text()
    assert f"warning: {rng}: random state not loaded" in log
    assert "resumed from" in log and "step 6" in log


def test_a_poisoned_newest_checkpoint_is_not_resumed(stopped_run, tiny_data, tmp_path):
    """Non-finite weights in the newest checkpoint (what a diverged run wrote before issue 26): the
    resume names it, sets it aside and falls back to the previous one."""
    import torch
    from safetensors.torch import load_file, save_file

    run = _copy(stopped_run, tmp_path)
    model = run / "checkpoints" / "step_6" / "model.safetensors"
    weights = load_file(str(model))
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(model))
    result = runner.invoke(app, _args(tiny_data, run, "--resume"))
    assert result.exit_code == 0, result.output
    log = (run / "train.log").read_text()
    assert f"cannot resume from {run / 'checkpoints' / 'step_6'}: " in log and "non-finite weights" in log
    assert f"fell back to {run / 'checkpoints' / 'step_3'} (step 3)" in log
    assert (run / "checkpoints" / "unusable_step_6").is_dir()
