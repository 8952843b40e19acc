"""Outputs checked before the work starts, and a full disk named instead of a traceback.

``check_writable`` creates the folder and a probe file in it, so a read-only folder, a path through a
file or a missing permission fails in one line before any image is processed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from dupl_cli.core.errors import UserError

DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
LOW_SPACE = 1 << 20  # bytes: below this a failed write is reported as a full disk


def _why(exc: OSError) -> str:
    if exc.errno in DISK_FULL:
        return "disk full (no space left on the device)"
    return exc.strerror or str(exc)


def check_writable(folder: Path, what: str = "output folder") -> Path:
    """``folder`` exists (created if needed) and accepts a new file, or a UserError naming it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: {what} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dupl-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{folder}: {what} is not writable ({_why(exc)})") from None
    return folder


def write_failure(path: Path, exc: BaseException) -> UserError | None:
    """A UserError for a failed write when the disk is full or the folder refused it, else None."""
    if isinstance(exc, OSError) and (
        exc.errno in DISK_FULL or exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
    ):
        return UserError(f"{path}: cannot write ({_why(exc)})", exit_code=1)
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None
    if free < LOW_SPACE:  # writers such as safetensors wrap the OSError in their own type
        return UserError(f"{path}: cannot write (disk full: {free} bytes free)", exit_code=1)
    return None
