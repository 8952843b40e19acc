"""Issue 26: train.log and metrics.jsonl appends on a full disk stop in one line naming the file."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
from pathlib import Path

import pytest
from full_disk import FREE
from train_parts import tiny_parts

from dupl_cli.config.schema import DuplSettings
from dupl_cli.core.errors import UserError
from dupl_cli.train import progress as progress_module
from dupl_cli.train.hooks import ValidationHook
from dupl_cli.train.loop import StepEvents
from dupl_cli.train.progress import TrainingProgress
from dupl_cli.train.state import TrainState


def _full(monkeypatch, under: Path, name: str) -> None:
    """Appends to ``under/name`` fail as on a full disk (a partial line, then ENOSPC); free space
    reads low."""
    real_open, real_usage = builtins.open, shutil.disk_usage

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "a" in mode and Path(file) == under / name:
            handle.write("{")
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return handle

    monkeypatch.setattr(progress_module, "open", fake_open, raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=FREE))


@pytest.mark.parametrize("name", ["train.log", "metrics.jsonl"])
def test_progress_appends_on_a_full_disk_are_one_line(tmp_path, monkeypatch, name):
    _full(monkeypatch, tmp_path, name)
    progress = TrainingProgress(10, 0, tmp_path, enabled=True, quiet=True)
    record = {"loss/total": 1.0, "lr": 1e-4, "tau_h": 0.5, "noise_share": 0.0, "phase": "A"}
    with pytest.raises(UserError, match=rf"^disk full while writing {tmp_path / name} \(.* MB free\)"):
        progress.message("hello")
        progress.update(1, record, 2)


def test_validation_metrics_on_a_full_disk_are_one_line(tmp_path, monkeypatch):
    _full(monkeypatch, tmp_path, "metrics.jsonl")
    parts = tiny_parts()
    settings = DuplSettings(train={"val_every": 1})
    progress = TrainingProgress(10, 0, None, enabled=True, quiet=True)
    hook = ValidationHook(parts, [], ["a", "b"], settings, (1.0,), progress, tmp_path, stop=2)
    monkeypatch.setattr(hook, "_scores", lambda: {"seg_s1": 1.0, "seg_s2": 2.0})
    with pytest.raises(UserError, match=rf"^disk full while writing {tmp_path / 'metrics.jsonl'}"):
        hook.after_step(TrainState(step=1), StepEvents(None))
