"""The run history: each run's ``run.json`` (status, preset), ``runs/latest``, and what ``dupl runs``
lists and shows. Torch-free, so listing runs is instant.

Status: ``running`` (written at the start), ``finished`` (the schedule's end), ``stopped`` (--max-iters
before the end; resumable), ``crashed`` (an exception, or a ``running`` run whose process is gone or
whose run lock nobody holds), ``unreadable`` (its run.json or card cannot be read: the row says why).
Writing run.json is atomic: a full disk is one line and leaves the previous file; ``mark_crashed``,
for crash handlers, never raises.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dupl_cli.config.keys import flatten
from dupl_cli.config.sources import load_settings
from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.core.errors import UserError, clip
from dupl_cli.core.textfile import parse_json, read_json, read_toml
from dupl_cli.runs.card import Card
from dupl_cli.runs.run_dir import step_of
from dupl_cli.runs.run_lock import LOCK_FILE, holder

RUN_FILE = "run.json"
LATEST = "latest"
CRASHED = "crashed"
UNREADABLE = "unreadable"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic (``core.atomic``): a full disk is one line naming the file and leaves no temporary file."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def load_run(run_dir: Path) -> dict[str, Any]:
    """``run.json``: {} when the run has none; a one-line UserError naming it when it cannot be read
    (not UTF-8, not JSON, nested thousands deep, not a table)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists() and not path.is_symlink():
        return {}
    data = read_json(path, "run file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: run file is not a JSON table (found a {type(data).__name__})")
    return data


def read_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` for listings and updates: {} when it is missing or unreadable."""
    try:
        return load_run(run_dir)
    except UserError:
        return {}


def mark_run(run_dir: Path, status: str, **fields: Any) -> None:
    """Record ``status`` (and ``fields``) in ``run.json``; keeps what earlier calls recorded.

    A write that fails (full disk, read-only folder) is one UserError line and leaves the previous
    run.json and no temporary file; ``crashed`` never raises (see :func:`mark_crashed`).
    """
    if status == CRASHED:
        mark_crashed(run_dir, fields.pop("error", ""), **fields)
        return
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info = {**read_run(run_dir), **fields, "status": status, "updated": now}
    if status == "running":
        info.update(pid=os.getpid(), host=socket.gethostname(), started=info.get("started", now))
        info.pop("error", None)
    _write_json(Path(run_dir) / RUN_FILE, info)


def mark_crashed(run_dir: Path, error: str, **fields: Any) -> bool:
    """Record ``crashed`` with the error line, for a crash handler: never raises (the error it
    handles is the one to show), never leaves a temporary file. False when run.json could not be
    written; the run still reads as crashed once its process is gone (``run_status``)."""
    try:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info = {**read_run(run_dir), **fields, "status": CRASHED, "updated": now, "error": clip(str(error))}
        _write_json(Path(run_dir) / RUN_FILE, info)
    except Exception:  # full disk, folder gone, anything: the crash itself is what the user must see
        return False
    return True


def point_latest(runs_root: Path, run_dir: Path) -> None:
    """Make ``<runs_root>/latest`` a symlink to ``run_dir`` (replaced atomically), when the run lives
    there."""
    runs_root, run_dir = Path(runs_root).resolve(), Path(run_dir).resolve()
    if run_dir.parent != runs_root:
        return
    link = runs_root / LATEST
    if link.exists() and not link.is_symlink():
        return  # a real folder named "latest" is someone's run: leave it
    tmp = runs_root / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # a file system without symlinks: the history still lists the run
        tmp.unlink(missing_ok=True)


def _alive(info: dict[str, Any]) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, trust the record
    try:
        os.kill(int(info["pid"]), 0)
    except (KeyError, ValueError, TypeError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _abandoned(run_dir: Path, info: dict[str, Any]) -> bool:
    """A ``running`` record no process is behind: its process is gone, or (same host) its run lock is
    free, as after a start that failed before its crash handler could write run.json."""
    if not _alive(info):
        return True
    if info.get("host") != socket.gethostname() or not (Path(run_dir) / LOCK_FILE).is_file():
        return False  # another machine's run, or a run from before the lock: trust the record
    try:
        return holder(run_dir) is None
    except OSError:  # a file system without flock: cannot tell
        return False


def run_status(run_dir: Path) -> str:
    info = read_run(run_dir)
    status = _text(info, "status")
    if status == "running" and _abandoned(run_dir, info):
        return CRASHED
    if status:
        return status
    return "finished" if (Path(run_dir) / "final.safetensors").is_file() else "unknown"


def _card(run_dir: Path, name: str) -> Card | None:
    return Card.peek(Path(run_dir) / f"{name}.json")


def run_step(run_dir: Path) -> int | None:
    steps = [step for p in (Path(run_dir) / "checkpoints").glob("step_*") if (step := step_of(p)) is not None]
    final = _card(run_dir, "final")
    found = [*steps, *([final.step] if final is not None and final.step is not None else [])]
    return max(found) if found else None


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _text(info: dict[str, Any], key: str) -> str | None:
    """A text field of run.json (None when absent or not text: a hand-edited file cannot break a list)."""
    value = info.get(key)
    return clip(value) if isinstance(value, str) else None


def _table(tree: Any, key: str) -> dict[str, Any]:
    value = tree.get(key) if isinstance(tree, dict) else None
    return value if isinstance(value, dict) else {}


def run_problem(run_dir: Path) -> str | None:
    """Why the run's own files (run.json, its cards) cannot be read, in one line; None when they can."""
    run_dir = Path(run_dir)
    try:
        load_run(run_dir)
        for name in ("final", "best"):
            if (run_dir / f"{name}.json").is_file():
                Card.read(run_dir / f"{name}.json")
    except UserError as exc:
        return str(exc)
    return None


def summary(run_dir: Path) -> dict[str, Any]:
    """One row of ``dupl runs list``; an unreadable run is a row too, with status ``unreadable`` and
    the reason in ``problem``."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    card = _card(run_dir, "final") or _card(run_dir, "best")
    settings = card.settings if card is not None else {}
    data = _table(settings, "data")
    max_iters = _table(settings, "train").get("max_iters")
    problem = run_problem(run_dir)
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "preset": _text(info, "preset"),
        "dataset": clip(f"{data.get('adapter')} {data.get('root')}") if data else None,
        "step": run_step(run_dir),
        "max_iters": max_iters if type(max_iters) is int else None,
        "status": UNREADABLE if problem else run_status(run_dir),
        "problem": problem,
        "best": best_validation(run_dir),
        "size_bytes": _size(run_dir),
        "started": _text(info, "started"),
    }


def best_validation(run_dir: Path) -> dict[str, Any] | None:
    """The highest seg mIoU any validation recorded: {step, student, seg_miou}; None without validation.
    (What the history shows; the checkpoint the run hands on follows train.select.)"""
    best = None
    for record in validation_history(run_dir):
        for student in (1, 2):
            score = record["validation"].get(f"seg_s{student}")
            if type(score) in (int, float) and (best is None or score > best["seg_miou"]):
                best = {"step": record.get("step"), "student": student, "seg_miou": score}
    return best


def list_runs(runs_root: Path) -> list[Path]:
    """Run directories under ``runs_root`` (the ``latest`` link excluded), oldest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir()
        if p.is_dir() and not p.is_symlink() and ((p / "config.toml").is_file() or (p / RUN_FILE).is_file())
    ]  # fmt: skip
    return sorted(found, key=lambda p: (_text(read_run(p), "started") or "", p.stat().st_mtime))


def validation_history(run_dir: Path) -> list[dict[str, Any]]:
    """The validation records of ``metrics.jsonl``, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = parse_json(line, f"line {n} of {path}", "metrics line")
        except UserError:
            continue  # a line cut by a kill, or not ours
        if isinstance(record, dict) and isinstance(record.get("validation"), dict):
            rows.append(record)
    return rows


def settings_changed_from_preset(run_dir: Path) -> list[tuple[str, Any, Any]]:
    """(key, preset value, run value) for each setting of the run's config.toml the preset sets otherwise."""
    config = Path(run_dir) / "config.toml"
    if not config.is_file():
        return []
    ran = flatten(read_toml(config, "run config"))
    preset = _text(read_run(run_dir), "preset")
    base = flatten(load_settings(preset, environ={}).settings.model_dump(mode="json"))
    out = []
    for key, value in ran.items():
        before = base.get(key)
        before = list(before) if isinstance(before, tuple) else before
        if before != value and not _same_relative_path(before, value):
            out.append((key, before, value))
    return out


def _same_relative_path(before: Any, value: Any) -> bool:
    """The preset's relative path made absolute by the trainer (its value is not a change)."""
    if not (isinstance(before, str) and isinstance(value, str)) or Path(before).is_absolute():
        return False
    return Path(value).is_absolute() and value.endswith(os.sep + before.removeprefix("./"))
