"""Odd files named as what they are (issue 26): a FIFO, socket, device, symbolic link loop, dangling
link or unreadable file given to ``dupl infer`` directly is one line saying what it is; a folder walk
or pattern that skips such entries says how many and why in one line, and never blocks on a FIFO."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dupl_cli.core.errors import UserError
from dupl_cli.tasks import infer
from dupl_cli.tasks.infer import check_checkpoint_arg, expand_inputs

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets and devices are POSIX")


def _image(path: Path) -> Path:
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(path)
    return path


@pytest.fixture
def odd(tmp_path):
    """A folder with one good image and every kind of odd entry, each named like an image."""
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "good.png")
    os.mkfifo(src / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock.png"))
    except OSError as exc:  # a socket path longer than the limit of sun_path
        pytest.skip(f"cannot bind a unix socket here: {exc}")
    (src / "loop.png").symlink_to("loop2.png")
    (src / "loop2.png").symlink_to("loop.png")
    (src / "dangling.png").symlink_to("nowhere.png")
    (src / "dev.png").symlink_to("/dev/null")  # a character device behind an image name
    yield src
    sock.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fifo.png", "is a FIFO (named pipe), not a regular file"),
        ("sock.png", "is a socket, not a regular file"),
        ("dev.png", "is a character device, not a regular file"),
        ("loop.png", "symbolic link loop (following it never reaches a file)"),
        ("dangling.png", "dangling symbolic link (its target nowhere.png does not exist)"),
    ],
)
def test_given_directly_each_is_named(odd, name, expected):
    files, problems = expand_inputs([str(odd / name)])
    assert files == [] and problems == [f"{odd / name}: {expected}"]


def test_a_folder_walk_says_how_many_it_skipped_and_why(odd):
    notes: list[str] = []
    files, problems = expand_inputs([str(odd)], notes=notes)
    assert files == [odd / "good.png"] and problems == []
    assert notes == [
        f"{odd}: skipped 6 entries that are not readable files (FIFO (named pipe) 1, character device 1, "
        "dangling link 1, socket 1, symbolic link loop 2)"
    ]
    notes.clear()
    files, _ = expand_inputs([str(odd / "*.png")], notes=notes)
    assert files == [odd / "good.png"] and len(notes) == 1 and "skipped 6 entries" in notes[0]


def test_permission_denied_is_named(odd, monkeypatch):
    """As any user: os.access and the folder listing say no (root reads everything, so they are told)."""
    secret = _image(odd / "secret.png")
    (odd / "locked").mkdir()
    real_access, real_scandir = os.access, os.scandir

    def access(path, mode, *a, **k):
        return False if Path(path).name in ("secret.png", "locked") else real_access(path, mode, *a, **k)

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "scandir", scandir)
    _, problems = expand_inputs([str(secret), str(odd / "locked")])
    assert problems == [
        f"{secret}: permission denied (the file cannot be read)",
        f"{odd / 'locked'}: permission denied (the folder cannot be listed)",
    ]
    notes: list[str] = []
    expand_inputs([str(odd)], notes=notes)
    assert "permission denied 2" in notes[0]  # secret.png and the folder it could not list


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_permission_denied_for_real(tmp_path):
    secret = _image(tmp_path / "secret.png")
    secret.chmod(0)
    _, problems = expand_inputs([str(secret)])
    assert problems == [f"{secret}: permission denied (the file cannot be read)"]


def test_a_fifo_is_never_opened_as_a_checkpoint(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=r"model.safetensors: is a FIFO \(named pipe\), not a regular file"):
        check_checkpoint_arg(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_the_cli_prints_one_line_each_and_a_note(cli, odd, tmp_path):
    r = cli("infer", cli.run_dir, odd / "fifo.png", odd / "loop.png", odd, "--out", tmp_path / "out")
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert f"skipped: {odd / 'fifo.png'}: is a FIFO (named pipe), not a regular file" in lines
    assert any(line.startswith(f"skipped: {odd / 'loop.png'}: symbolic link loop") for line in lines)
    assert sum(line.startswith(f"note: {odd}: skipped 6 entries") for line in lines) == 1
    assert (tmp_path / "out" / "good.png").is_file() and "Traceback" not in r.output
    assert infer.INDEX_FILE in os.listdir(tmp_path / "out")
