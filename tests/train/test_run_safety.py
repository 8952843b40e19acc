"""A run directory is never shared, never left dirty, and never fails late (issue 17 items 3, 4, 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.runs.run_dir import checkpoint_dirs
from dupl_cli.runs.run_lock import holder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

runner = CliRunner()
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _args(root, run, *extra):
    return ["train", "--preset", "tiny-cpu", "--set", f"data.root={root}", "--run-dir", str(run), *extra]


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def test_two_starts_into_one_run_dir_one_refused_and_kill_frees_the_lock(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = _args(tiny_data, run, "--set", "train.max_iters=40", "--set", "train.ckpt_every=2",
                 "--set", "train.val_every=1000")  # fmt: skip
    cmd = [sys.executable, "-m", "dupl_cli", *args]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not any(p.poll() is not None for p in procs):
        time.sleep(0.1)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    assert loser.returncode == 2, loser.stderr.read()[-2000:]
    assert f"{run}: another dupl train (pid {winner.pid}) is training" in _error_line(loser.stderr.read())
    assert holder(run) == winner.pid
    while time.time() < deadline and len(checkpoint_dirs(run)) < 1 and winner.poll() is None:
        time.sleep(0.2)
    winner.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
    winner.wait()
    assert holder(run) is None
    result = subprocess.run([*cmd, "--resume", "--set", "train.max_iters=6"], env=ENV, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in (run / "train.log").read_text()


def test_leftovers_of_a_kill_are_removed_on_the_next_start(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_data, run, "--max-iters", "3"))
    assert result.exit_code == 0, result.output
    # What kill -9 leaves mid-write: an atomic write's temporary file and a partial checkpoint.
    (run / ".best.safetensors.k2j4x9.tmp").write_bytes(b"")
    (run / ".config.toml.a1b2c3.tmp").write_bytes(b"half")
    partial = run / "checkpoints" / ".tmp_step_6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    result = runner.invoke(app, _args(tiny_data, run, "--resume"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.glob(".*.tmp")) == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3", "step_6"]
    log = (run / "train.log").read_text()
    assert ("removed what an interrupted run left behind: .best.safetensors.k2j4x9.tmp, "
            ".config.toml.a1b2c3.tmp, checkpoints/.tmp_step_6") in log  # fmt: skip


def _bad_val_copy(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    mask = root / "masks" / "val_00001.png"
    with Image.open(mask) as img:
        arr, palette = np.array(img), img.getpalette()
    arr[:4, :4] = 17  # not a class id (5 classes) and not the ignore value
    bad = Image.fromarray(arr, mode="P")
    bad.putpalette(palette)
    bad.save(mask)
    return root, mask


def test_bad_validation_mask_fails_before_the_first_step(tiny_data, tmp_path):
    root, mask = _bad_val_copy(tiny_data, tmp_path)
    run = tmp_path / "run"
    result = runner.invoke(app, _args(root, run))
    assert result.exit_code == 1, result.output
    assert "problem(s) in split 'val'" in result.output and str(mask) in result.output
    assert "Traceback" not in result.output
    assert not (run / "checkpoints").exists()  # no step was spent
    assert "fatal: 1 problem(s) in split 'val'" in (run / "train.log").read_text()  # the error is in the log
    # data.on_error = skip applies to the val split too: training runs, the sample is named.
    run2 = tmp_path / "run2"
    result = runner.invoke(app, _args(root, run2, "--set", "data.on_error=skip"))
    assert result.exit_code == 0, result.output
    log = (run2 / "train.log").read_text()
    assert "skipping 1 bad validation sample(s)" in log and str(mask) in log
    assert (run2 / "final.safetensors").is_file()
