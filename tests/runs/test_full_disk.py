"""Every write survives a full disk (issue 26): one line ``disk full while writing PATH (N MB free)``,
no temporary file left, the previous file (checkpoint, card, run.json) as it was.

Each writer is tested with ENOSPC injected at its low-level write (tests/full_disk.py ``inject``) and,
as root, on a real tmpfs of a few MB (``small_fs``; skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from full_disk import fill, inject, leftovers, small_fs
from torch import nn

from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.core.errors import UserError
from dupl_cli.runs import run_index
from dupl_cli.runs.card import Card, read_card
from dupl_cli.runs.checkpoint import save_model
from dupl_cli.runs.run_dir import checkpoint_dirs, read_state, save_checkpoint, write_config
from dupl_cli.runs.run_lock import RunLock

LINE = re.compile(r"^disk full while writing (\S+) \((\d+\.\d) MB free\)$")


def _full(info, path) -> None:
    message = str(info.value)
    match = LINE.match(message)
    assert match and match.group(1) == str(path), message
    assert info.value.exit_code == 1


def _card(step: int) -> Card:
    return Card(classes=["cat"], palette=[(0, 0, 0), (1, 2, 3)], settings={"train": {"lr": 1.0}}, step=step)


# -- injected ENOSPC ------------------------------------------------------------------------------


def test_text_writers_name_the_file_and_keep_the_old_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_config(run, {"train": {"lr": 0.1}}, {})
    _card(1).write(run / "final.json")
    inject(monkeypatch, run)
    with pytest.raises(UserError) as info:
        write_config(run, {"train": {"lr": 0.2}}, {})
    _full(info, run / "config.toml")
    with pytest.raises(UserError) as info:
        _card(2).write(run / "final.json")
    _full(info, run / "final.json")
    with pytest.raises(UserError) as info:
        atomic_write_text(run / "new.txt", "x")
    _full(info, run / "new.txt")
    assert "lr = 0.1" in (run / "config.toml").read_text() and read_card(run / "final.safetensors").step == 1
    assert leftovers(run) == [] and not (run / "new.txt").exists()


def test_save_model_keeps_the_previous_weights_and_card(tmp_path, monkeypatch):
    run = tmp_path / "run"
    torch.manual_seed(0)
    old = save_model(run / "final", nn.Linear(4, 3), _card(1))
    before = old.read_bytes()
    inject(monkeypatch, run, names=(".safetensors",))
    with pytest.raises(UserError) as info:
        save_model(run / "final", nn.Linear(4, 3), _card(2))
    assert str(info.value).startswith(f"disk full while writing {old} (0.0 MB free)")
    assert old.read_bytes() == before and read_card(old).step == 1 and leftovers(run) == []
    monkeypatch.undo()
    inject(monkeypatch, run, names=(".json",))  # the weights fit, the card does not
    with pytest.raises(UserError) as info:
        save_model(run / "final", nn.Linear(4, 3), _card(2))
    _full(info, run / "final.json")
    assert old.read_bytes() == before and read_card(old).step == 1 and leftovers(run) == []


def test_run_json_write_fails_in_one_line_and_crashed_never_raises(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    run_index.mark_run(run, "running", preset="tiny-cpu")
    inject(monkeypatch, run)
    with pytest.raises(UserError) as info:
        run_index.mark_run(run, "finished", step=3)
    _full(info, run / "run.json")
    run_index.mark_run(run, "crashed", error="RuntimeError: boom")  # the crash handler's call
    assert run_index.mark_crashed(run, "RuntimeError: boom") is False
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # as it was
    assert leftovers(run) == [] and [p.name for p in run.iterdir()] == ["run.json"]


def test_mark_crashed_never_raises(tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("")
    assert run_index.mark_crashed(tmp_path / "file.txt" / "run", "x") is False  # a path through a file
    run_index.mark_run(tmp_path / "file.txt" / "run", "crashed", error="x")
    monkeypatch.setattr(run_index, "atomic_write_text", lambda *a: 1 / 0)  # any failure at all
    assert run_index.mark_crashed(tmp_path, "x") is False
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def _accelerated(width: int):
    from dupl_cli.train.accel import make_accelerator

    accelerator = make_accelerator("no")
    torch.manual_seed(0)
    model = nn.Linear(width, width)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, width)).sum().backward()
    optimizer.step()
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin"])
def test_save_checkpoint_maps_the_serializers_errors_and_cleans_up(tmp_path, monkeypatch, name):
    accelerator = _accelerated(8)
    run = tmp_path / "run"
    save_checkpoint(accelerator, run, 3, {"step": 3}, keep=3)
    inject(monkeypatch, run / "checkpoints", names=(name,))
    with pytest.raises(UserError) as info:
        save_checkpoint(accelerator, run, 6, {"step": 6}, keep=3)
    _full(info, run / "checkpoints" / "step_6" / name)
    assert [step for step, _ in checkpoint_dirs(run)] == [3] and read_state(run / "checkpoints" / "step_3")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3"]


# -- a real small file system ---------------------------------------------------------------------


def test_real_full_disk_text_card_and_run_json(tmp_path):
    with small_fs(tmp_path / "fs", "1m") as fs:
        run = fs / "run"
        run.mkdir()
        run_index.mark_run(run, "running", preset="tiny-cpu")
        write_config(run, {"train": {"lr": 0.1}}, {})
        fill(fs)
        with pytest.raises(UserError) as info:
            run_index.mark_run(run, "stopped", step=3)
        assert LINE.match(str(info.value)) and str(run / "run.json") in str(info.value)
        assert run_index.mark_crashed(run, "boom") is False  # never raises
        run_index.mark_run(run, "crashed", error="boom")
        with pytest.raises(UserError) as info:
            write_config(run, {"train": {"lr": 0.2, "note": "x" * 10000}}, {})
        assert str(info.value).startswith(f"disk full while writing {run / 'config.toml'} (0.0 MB free)")
        assert json.loads((run / "run.json").read_text())["status"] == "running"
        assert "lr = 0.1" in (run / "config.toml").read_text() and leftovers(fs) == []


def test_real_full_disk_weights(tmp_path):
    with small_fs(tmp_path / "fs", "2m") as fs:
        small = save_model(fs / "run" / "final", nn.Linear(8, 8), _card(1))
        with pytest.raises(UserError) as info:
            save_model(fs / "run" / "final", nn.Linear(800, 800), _card(2))  # 2.5 MB of weights
        assert LINE.match(str(info.value)) and str(small) in str(info.value), info.value
        assert read_card(small).step == 1 and leftovers(fs) == []
        assert sorted(p.name for p in (fs / "run").iterdir()) == ["final.json", "final.safetensors"]


def test_real_full_disk_checkpoint(tmp_path):
    accelerator = _accelerated(300)  # 0.36 MB of weights, 0.72 MB of optimizer state
    with small_fs(tmp_path / "fs", "2m") as fs:
        run = fs / "run"
        save_checkpoint(accelerator, run, 3, {"step": 3}, keep=3)
        with pytest.raises(UserError) as info:
            save_checkpoint(accelerator, run, 6, {"step": 6}, keep=3)
        match = LINE.match(str(info.value))
        assert match and match.group(1).startswith(str(run / "checkpoints" / "step_6")), info.value
        assert [step for step, _ in checkpoint_dirs(run)] == [3] and leftovers(fs) == []


def test_real_full_disk_lock(tmp_path):
    with small_fs(tmp_path / "fs", "1m") as fs:
        fill(fs)
        with pytest.raises(UserError) as info:
            RunLock.acquire(fs)
        assert LINE.match(str(info.value)) and str(fs / ".lock") in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_full_disk_training(run_cli, tiny_data, tmp_path):
    """A whole tiny training into a 3 MB run directory: the first checkpoint does not fit."""
    with small_fs(tmp_path / "fs", "3m") as fs:
        run = fs / "run"
        r = run_cli("train", "--preset", "tiny-cpu", "--set", f"data.root={tiny_data}", "--run-dir", run)
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.output
        match = LINE.match(errors[0].removeprefix("error: "))
        assert match and match.group(1).startswith(str(run / "checkpoints" / "step_")), errors[0]
        assert run_index.run_status(run) == "crashed" and leftovers(fs) == []
        assert json.loads((run / "run.json").read_text())["error"].endswith(errors[0].removeprefix("error: "))
