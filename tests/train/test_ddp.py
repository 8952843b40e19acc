"""Two-process data parallel on CPU (gloo) through accelerate's debug launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(root: Path, out: Path, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(WORKER), str(root), str(out), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_cpu_ddp_matches_one_process(tiny_data, tmp_path):
    _run(tiny_data, tmp_path, "ddp")
    rank0 = load_file(str(tmp_path / "ddp-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp-rank1.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks diverged at {key}"

    _run(tiny_data, tmp_path, "single")
    single = load_file(str(tmp_path / "single-rank0.safetensors"))
    gap = max((rank0[key] - single[key]).abs().max().item() for key in rank0)
    assert gap < 1e-4, f"2 processes x 1 image differ from 1 process x 2 images by {gap}"
    # Training really moved the weights (so the agreement above is not two untouched copies).
    start = load_file(str(tmp_path / "start.safetensors"))
    frozen = [k for k in start if k.endswith("pos_embed")]
    assert frozen and all(torch.equal(start[k], single[k]) for k in frozen), "not the same start"
    moved = max((single[key] - start[key]).abs().max().item() for key in start)
    assert moved > 1e-4
