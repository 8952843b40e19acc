"""Validation sharded over two CPU processes gives one process's scores on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("validation_ddp_worker.py")


def _run(root: Path, out: Path, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(WORKER), str(root), str(out), mode],
        env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_ranks_each_validate_their_shard_and_agree_with_one_process(tiny_data, tmp_path):
    _run(tiny_data, tmp_path, "ddp")
    _run(tiny_data, tmp_path, "single")
    ranks = [json.loads((tmp_path / f"ddp-rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "single-rank0.json").read_text())
    assert [r["world"] for r in ranks] == [2, 2] and single["world"] == 1
    assert ranks[0]["images"] + ranks[1]["images"] == single["images"]  # each rank its share
    assert min(r["images"] for r in ranks) >= 1
    assert ranks[0]["scores"] == ranks[1]["scores"] == single["scores"]
