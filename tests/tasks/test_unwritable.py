"""Unwritable outputs fail in one line before the work starts; a full disk is named (17.9)."""

import errno
import os

import numpy as np
import pytest
from PIL import Image


def _error_line(r):
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    return errors[0]


@pytest.fixture
def photo(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(src / "a.png")
    return src


@pytest.fixture
def blocked(tmp_path):
    """A folder path that cannot be created (it goes through a file), as a read-only disk refuses one."""
    (tmp_path / "file.txt").write_text("x")
    return tmp_path / "file.txt" / "out"


@pytest.mark.parametrize("command", ["infer", "evaluate", "export"])
def test_unwritable_output_fails_before_any_work(cli, photo, blocked, command):
    target = {"infer": blocked, "evaluate": blocked, "export": blocked / "m.safetensors"}[command]
    args = {"infer": [cli.run_dir, photo], "evaluate": [cli.run_dir], "export": [cli.run_dir]}[command]
    r = cli(command, *args, "--out", target)
    assert r.exit_code == 2
    line = _error_line(r)
    folder = target if command != "export" else target.parent
    assert f"{folder}: " in line and "is not writable (Not a directory)" in line
    assert "evaluate val" not in r.output  # refused before the split was processed


def test_unwritable_run_dir_fails_before_training(run_cli, tiny_data, blocked):
    r = run_cli("train", "--preset", "tiny-cpu", "--set", f"data.root={tiny_data}", "--run-dir", blocked)
    assert r.exit_code == 2
    assert f"{blocked}: run directory is not writable" in _error_line(r)


def test_disk_full_while_writing_masks_names_the_path(cli, photo, tmp_path, monkeypatch):
    def full(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "masks"
    r = cli("infer", cli.run_dir, photo, "--out", out)
    assert r.exit_code == 1
    line = _error_line(r)
    assert f"error: disk full while writing {out / 'a.png'} (" in line and line.endswith(" MB free)"), line
    assert [p.name for p in out.iterdir()] == []  # no half-written file left behind


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_folder(cli, photo, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = cli("infer", cli.run_dir, photo, "--out", ro)
    assert r.exit_code == 2 and f"{ro}: --out folder is not writable (Permission denied)" in _error_line(r)
