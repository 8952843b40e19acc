"""``benchmarks/gpu_check.py --dry``: every part of the GPU check runs at toy size on the CPU and
prints every figure the script promises (the figures themselves mean nothing on a CPU)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
NUM = r"(\d+\.\d+)"
SHARE = r"(\d+(?:\.\d+)?)"  # a percentage, printed as 0 when none changed
LINES = {
    **{
        mode: rf"^\s*{mode}: s/step A {NUM}  B {NUM}  C {NUM}  \(mean {NUM}\); peak (nan|\d+\.\d+) GiB; "
        rf"VOC 20k-iteration schedule {NUM} min \(steps only\)$"
        for mode in ("eager", "compiled")
    },
    "trainer": rf"^trainer: {NUM} images/s over a 2-iteration `dupl train` run ",
    "evaluate": rf"^evaluate: {NUM} images/s single-scale, {NUM} images/s multi-scale \+ flip ",
    "validation": rf"^\s+validation share, batched on every rank: {NUM} % \(1 process\), "
    rf"{NUM} % \(8 processes\)$",
    "bf16 cam": rf"^\s+cam max \|d\|\s+student 1: {NUM}  student 2: {NUM}$",
    "bf16 labels": rf"^\s+PAR label pixels changed %\s+student 1: {SHARE}  student 2: {SHARE}$",
}
NONNEGATIVE = {"bf16 labels"}  # a share of changed pixels may be 0


def test_dry_run_prints_every_figure(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry"], cwd=tmp_path, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpu-check: CPU (dry run")
    for name, pattern in LINES.items():
        found = [m for line in lines if (m := re.match(pattern, line))]
        assert len(found) == 1, f"{name}: no line matching {pattern!r} in\n{done.stdout}"
        figures = [float(g) for g in found[0].groups() if g != "nan"]
        low = 0 if name in NONNEGATIVE else 1e-12
        assert all(math.isfinite(f) and f >= low for f in figures), (name, figures)
    assert list(tmp_path.iterdir()) == []  # everything it writes goes to its own temporary folder
