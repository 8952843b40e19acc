"""Atomic writes: a temporary file beside the target, renamed over it, so a kill never leaves half a file.

A write that fails (full disk, read-only folder, a serializer's error) removes its temporary file and
leaves the previous target as it was; a full disk or refused folder is one line naming the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from dupl_cli.core.writable import write_failure


def _mapped(path: Path, exc: BaseException) -> BaseException:
    failure = write_failure(path, exc)
    return exc if failure is None else failure


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:  # no inode, no permission, the folder is a file
        raise _mapped(path, exc) from None
    try:
        write(Path(tmp))
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        failure = write_failure(path, exc)  # before the unlink: the free space it reports is the writer's
        Path(tmp).unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
