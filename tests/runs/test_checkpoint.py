"""Checkpoint files: atomic writes, permissions, card checks, checkpoint resolution."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dupl_cli.config.schema import DuplSettings
from dupl_cli.core.atomic import atomic_write, atomic_write_text
from dupl_cli.core.errors import UserError
from dupl_cli.runs.card import read_card
from dupl_cli.runs.checkpoint import resolve_checkpoint


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


def test_card_problems_are_one_line(tmp_path):
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="card is missing"):
        read_card(weights)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_card(weights)
    (tmp_path / "m.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a dupl checkpoint card"):
        read_card(weights)


def test_resolve_checkpoint(tmp_path):
    settings = DuplSettings(train={"runs_root": tmp_path / "runs"})
    with pytest.raises(UserError, match="no run with a checkpoint"):
        resolve_checkpoint(None, settings)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    with pytest.raises(UserError, match="no best.safetensors"):
        resolve_checkpoint(run, settings)
    (run / "final.safetensors").write_bytes(b"")
    assert resolve_checkpoint(run, settings) == (run / "final.safetensors", "given")
    (run / "best.safetensors").write_bytes(b"")
    assert resolve_checkpoint(None, settings) == (run / "best.safetensors", "newest run")
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope.safetensors", settings)
