"""Issue 26: a resume and a dry run show dupl's own lines, not third-party chatter (Accelerate's
"... loaded successfully" five times, torch's UserWarning)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHATTER = ("loaded successfully", "UserWarning", "Warning:", "[RANK ", "Traceback")


def _dupl(*args) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "dupl_cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _chatter(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(c in line for c in CHATTER)]


def test_resume_and_dry_run_print_no_third_party_chatter(tiny_data, tmp_path):
    common = (
        "--preset",
        "tiny-cpu",
        "--set",
        f"data.root={tiny_data}",
        "--set",
        f"train.runs_root={tmp_path}",
    )
    dry = _dupl("train", *common, "--dry-run")
    assert "dry run: phase" in dry and _chatter(dry) == []
    run = tmp_path / "run"
    _dupl("train", *common, "--run-dir", run, "--max-iters", 3)
    resumed = _dupl("train", *common, "--run-dir", run, "--resume", "latest", "--max-iters", 4)
    assert "resumed from" in resumed and _chatter(resumed) == [], resumed
