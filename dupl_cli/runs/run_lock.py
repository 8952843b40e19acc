"""One training process per run directory, and the leftovers of an interrupted one removed.

The lock is an advisory ``flock`` on ``<run>/.lock``: the kernel drops it when the holder exits in
any way (``kill -9`` included), so a dead process never leaves a run directory locked. The file
keeps the holder's pid for the message the next process prints; ``holder`` tells "running" apart
from "crashed" for tools that list runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dupl_cli.core.errors import UserError
from dupl_cli.core.writable import write_failure

LOCK_FILE = ".lock"


class RunLock:
    """Held from ``acquire`` until ``release`` or the end of the process."""

    def __init__(self, run_dir: Path, fd: int, unsupported: str | None = None) -> None:
        self.run_dir, self._fd = Path(run_dir), fd
        self.unsupported = unsupported  # why the file system gave no lock (the run goes on unlocked)

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        import fcntl

        run_dir = Path(run_dir)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{run_dir}: another dupl train (pid {pid}) is training in this run directory; "
                "wait for it to finish or choose another --run-dir"
            ) from None
        except OSError as exc:  # some network file systems have no flock
            os.close(fd)
            return cls(run_dir, -1, exc.strerror or str(exc))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: one line, and the lock is not kept
            os.close(fd)
            raise write_failure(run_dir / LOCK_FILE, exc) or exc from None
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def holder(run_dir: Path) -> int | None:
    """The pid training in ``run_dir`` now, or None (never trained, finished or crashed)."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)  # also releases the shared lock taken to probe
    return None


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what a killed run leaves: temporary files of atomic writes and partial checkpoints.

    Only called with the run's lock held, so nothing here is being written by anyone else.
    """
    run_dir = Path(run_dir)
    found = sorted(p for p in run_dir.glob(".*.tmp") if p.is_file())
    found += sorted((run_dir / "checkpoints").glob(".tmp_step_*"))
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found
