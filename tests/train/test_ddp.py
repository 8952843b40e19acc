"""Two-process data parallel on CPU (gloo) through accelerate's debug launcher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# accelerate's debug launcher always listens on port 29500: one such test at a time
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.xdist_group("gloo-port-29500")]

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_process_cpu_ddp_matches_one_process(tiny_data, tmp_path, run_worker):
    run_worker(WORKER, tiny_data, tmp_path, "ddp", timeout=600)
    rank0 = load_file(str(tmp_path / "ddp-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp-rank1.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks diverged at {key}"

    run_worker(WORKER, tiny_data, tmp_path, "single", timeout=600)
    single = load_file(str(tmp_path / "single-rank0.safetensors"))
    gap = max((rank0[key] - single[key]).abs().max().item() for key in rank0)
    assert gap < 1e-4, f"2 processes x 1 image differ from 1 process x 2 images by {gap}"
    # Training really moved the weights (so the agreement above is not two untouched copies).
    start = load_file(str(tmp_path / "start.safetensors"))
    frozen = [k for k in start if k.endswith("pos_embed")]
    assert frozen and all(torch.equal(start[k], single[k]) for k in frozen), "not the same start"
    moved = max((single[key] - start[key]).abs().max().item() for key in start)
    assert moved > 1e-4
