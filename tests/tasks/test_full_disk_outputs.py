"""Prediction outputs on a full disk (issue 26): masks, index.csv and metrics.json fail in one line
``disk full while writing PATH (N MB free)`` and leave no temporary file; injected ENOSPC and, as
root, a real tmpfs of a few MB."""

from __future__ import annotations

import re

import numpy as np
import pytest
from full_disk import fill, inject, leftovers, small_fs
from PIL import Image

LINE = re.compile(r"^error: disk full while writing (\S+) \((\d+\.\d) MB free\)$")


def _error_line(r) -> str:
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    return errors[0]


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(src / f"{name}.png")
    return src


def test_index_csv_on_a_full_disk(cli, photos, tmp_path, monkeypatch):
    out = tmp_path / "masks"
    inject(monkeypatch, out, names=("index.csv",))
    r = cli("infer", cli.run_dir, photos, "--out", out)
    assert r.exit_code == 1
    match = LINE.match(_error_line(r))
    assert match and match.group(1) == str(out / "index.csv")
    assert leftovers(out) == [] and not (out / "index.csv").exists()


def test_evaluate_metrics_on_a_full_disk(cli, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    inject(monkeypatch, out, names=("metrics.json",))
    r = cli("evaluate", cli.run_dir, "--out", out, "--max-images", "2")
    assert r.exit_code == 1
    match = LINE.match(_error_line(r))
    assert match and match.group(1) == str(out / "metrics.json")
    assert leftovers(out) == [] and not (out / "metrics.json").exists()


def test_infer_on_a_real_full_disk(cli, photos, tmp_path):
    with small_fs(tmp_path / "fs", "1m") as fs:
        out = fs / "masks"
        out.mkdir()
        fill(fs)
        r = cli("infer", cli.run_dir, photos, "--out", out)
        assert r.exit_code == 1, r.output
        match = LINE.match(_error_line(r))
        assert match and match.group(1) == str(out / "a.png") and match.group(2) == "0.0", r.output
        assert leftovers(fs) == [] and sorted(p.name for p in out.iterdir()) == []
