"""The real multi-process launch path on CPU: `torchrun -m dupl_cli train` and `... evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "dupl_cli",
        *args,
    ]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_torchrun_trains_and_evaluates_data_parallel(tiny_data, tmp_path):
    run = tmp_path / "run"
    common = ["--preset", "tiny-cpu", "--set", f"data.root={tiny_data}"]
    trained = _torchrun(
        "train",
        *common,
        "--run-dir",
        str(run),
        "--set",
        "train.max_iters=4",
        "--set",
        "train.batch_size=1",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    # One run, written once: the effective batch counts both processes.
    assert "effective batch 2 = 2 process(es) x 1 per device" in trained.stderr
    assert (run / "final.safetensors").is_file()
    steps = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "phase" in line
    ]
    assert steps == [1, 2, 3, 4], "each step must be logged once, by the main process only"

    out2, out1 = tmp_path / "eval2", tmp_path / "eval1"
    two = _torchrun("evaluate", str(run), *common, "--out", str(out2), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "dupl_cli", "evaluate", str(run), *common, "--out", str(out1)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    # The confusion matrix summed over both shards equals the one-process matrix.
    sharded, single = (out2 / "confusion.csv").read_text(), (out1 / "confusion.csv").read_text()
    assert sharded == single
    assert sum(int(v) for line in single.splitlines()[1:] for v in line.split(",")[1:]) > 0
