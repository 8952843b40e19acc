"""Outputs checked before the work starts, and a full disk named instead of a traceback.

``check_writable`` creates the folder and a probe file in it, so a read-only folder, a path through a
file or a missing permission fails in one line before any image is processed. ``write_failure`` turns
a write that failed on a full disk into the one line ``disk full while writing PATH (N MB free)``,
whoever raised it: Python's OSError, or a serializer (safetensors, torch) that wraps it in its own type.
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
# How serializers that do not raise OSError say ENOSPC/EDQUOT (safetensors: Rust's io::Error).
_FULL_TEXT = ("no space left on device", "storagefull", "disk quota exceeded", "os error 28", "os error 122")


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


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or during (a serializer wraps the OSError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is ENOSPC/EDQUOT, as an OSError or in a serializer's words."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in DISK_FULL:
            return True
        if any(marker in str(link).lower() for marker in _FULL_TEXT):
            return True
    return False


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing folder); None if unknown."""
    for folder in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def disk_full(path: Path, free: int | None = None) -> UserError:
    """The one line for a write to ``path`` that found the disk full."""
    free = free_bytes(Path(path).parent) if free is None else free
    room = "free space unknown" if free is None else f"{free / 1e6:.1f} MB free"
    return UserError(f"disk full while writing {path} ({room})", exit_code=1)


def write_failure(path: Path, exc: BaseException) -> UserError | None:
    """A UserError for a failed write when the disk is full or the folder refused it, else None
    (a UserError already raised is left as it is: it is one line)."""
    if isinstance(exc, UserError) or not isinstance(exc, Exception):
        return None
    free = free_bytes(Path(path).parent)
    if is_disk_full(exc) or (free is not None and free < LOW_SPACE):
        return disk_full(path, free)  # writers such as safetensors wrap the OSError in their own type
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return UserError(f"{path}: cannot write ({_why(exc)})", exit_code=1)
    return None
