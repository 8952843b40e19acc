"""A full disk for tests, two ways (issue 26).

``inject``: every low-level writer dupl's outputs go through (``Path.write_text``/``write_bytes``,
PIL's ``Image.save``, safetensors' ``save_file``, ``torch.save``, ``os.pwrite``) writes a few bytes
and then fails the way it does when the disk fills up, for paths under one folder; the free space
reads as almost none. ``small_fs``: a real tmpfs of a few MB mounted inside the test's folder (root
only; skipped with the reason otherwise), always unmounted.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FREE = 4096  # bytes the "full" disk reports free
PARTIAL = b"\0" * 64  # what a writer manages before the disk is full


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def inject(monkeypatch, under: Path, names: tuple[str, ...] = ()) -> None:
    """Writes to files under ``under`` (whose name contains one of ``names``, when given) fail with
    ENOSPC after a partial write, each writer raising what it raises on a real full disk."""
    import PIL.Image
    import safetensors.torch
    import torch
    from safetensors import SafetensorError

    under = Path(under).resolve()

    def inside(path) -> bool:
        try:
            p = Path(path).resolve()
        except (TypeError, OSError):
            return False
        return p == under or under in p.parents

    def hit(path) -> bool:
        return inside(path) and (not names or any(n in Path(path).name for n in names))

    def partial(path) -> None:
        with open(path, "wb") as fh:
            fh.write(PARTIAL)

    def wrap(original, fail):
        def writer(*args, **kwargs):
            target = _target(original, args, kwargs)
            if target is not None and hit(target):
                partial(target)
                raise fail(target)
            return original(*args, **kwargs)

        return writer

    safetensors_error = lambda p: SafetensorError(  # noqa: E731  (the message safetensors gives)
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )
    torch_error = lambda p: RuntimeError(  # noqa: E731  (torch.save's, with no errno in it)
        "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
    )
    monkeypatch.setattr(Path, "write_text", wrap(Path.write_text, _enospc))
    monkeypatch.setattr(Path, "write_bytes", wrap(Path.write_bytes, _enospc))
    monkeypatch.setattr(PIL.Image.Image, "save", wrap(PIL.Image.Image.save, _enospc))
    monkeypatch.setattr(safetensors.torch, "save_file", wrap(safetensors.torch.save_file, safetensors_error))
    monkeypatch.setattr(torch, "save", wrap(torch.save, torch_error))
    try:
        import accelerate.utils.other as accelerate_other

        monkeypatch.setattr(
            accelerate_other, "safe_save_file", wrap(accelerate_other.safe_save_file, safetensors_error)
        )
    except ImportError:
        pass
    real_usage = shutil.disk_usage

    def disk_usage(path):
        usage = real_usage(path)
        return usage._replace(free=FREE) if inside(path) else usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def _target(original, args, kwargs):
    """The file a writer call writes: ``self`` for Path methods, else the path argument."""
    name = getattr(original, "__name__", "")
    if name in ("write_text", "write_bytes"):
        return args[0]
    if name == "save" and args and hasattr(args[0], "mode"):  # PIL: (image, fp, ...)
        fp = args[1] if len(args) > 1 else kwargs.get("fp")
        return fp if isinstance(fp, str | os.PathLike) else None
    if len(args) > 1:  # save_file(tensors, filename), torch.save(obj, f)
        f = args[1]
        return f if isinstance(f, str | os.PathLike) else None
    return kwargs.get("filename") or kwargs.get("f")


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and partial checkpoints anything left under ``folder``."""
    return sorted(
        p
        for p in Path(folder).rglob("*")
        if p.name.endswith(".tmp")
        or p.name.startswith((".tmp_step_", ".run.json", ".dupl-write-check"))
        or (p.name.startswith(".") and ".import-" in p.name)
    )


def mount_reason() -> str | None:
    """Why a tmpfs cannot be mounted here (None when it can be tried)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "tmpfs mounts need a POSIX system"
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    return None


@contextmanager
def small_fs(folder: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (created) for the block; always unmounted."""
    import pytest

    reason = mount_reason()
    if reason:
        pytest.skip(reason)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system holding ``folder`` (a small tmpfs) to the last byte."""
    fd = os.open(Path(folder) / "filler.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
