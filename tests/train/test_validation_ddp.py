"""Validation sharded over two CPU processes gives one process's scores on both ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# accelerate's debug launcher always listens on port 29500: one such test at a time
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.xdist_group("gloo-port-29500")]

WORKER = Path(__file__).with_name("validation_ddp_worker.py")


def test_two_ranks_each_validate_their_shard_and_agree_with_one_process(tiny_data, tmp_path, run_worker):
    run_worker(WORKER, tiny_data, tmp_path, "ddp", timeout=280)
    run_worker(WORKER, tiny_data, tmp_path, "single", timeout=280)
    ranks = [json.loads((tmp_path / f"ddp-rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "single-rank0.json").read_text())
    assert [r["world"] for r in ranks] == [2, 2] and single["world"] == 1
    assert ranks[0]["images"] + ranks[1]["images"] == single["images"]  # each rank its share
    assert min(r["images"] for r in ranks) >= 1
    assert ranks[0]["scores"] == ranks[1]["scores"] == single["scores"]
