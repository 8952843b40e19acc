"""Run directories: resolved config, rotating Accelerate checkpoints written atomically, resume lookup.

A checkpoint ``checkpoints/step_<n>/`` is first written as ``checkpoints/.tmp_step_<n>/`` and renamed
once complete (``trainer_state.json`` is the last file written), so a kill at any moment leaves the
previous checkpoint as the latest valid one.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from dupl_cli.config.keys import flatten
from dupl_cli.config.toml_writer import dumps
from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.core.errors import UserError, shown
from dupl_cli.core.textfile import read_json, read_toml
from dupl_cli.core.writable import write_failure

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def new_run_dir(runs_root: Path, run_name: str | None, preset: str | None) -> Path:
    if run_name:
        return Path(runs_root) / run_name
    stem = Path(preset).stem if preset else "run"
    return Path(runs_root) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


_PATH_SETTINGS = {
    "data": ("root", "train_list", "val_list", "labels_file", "pseudo_labels"),
    "train": ("runs_root",),
    "eval": ("checkpoint",),
}


def absolute_paths(settings):
    """``settings`` with every path setting absolute and resolved, so a run's config and cards mean the
    same files from any working directory."""
    update = {}
    for section, keys in _PATH_SETTINGS.items():
        values = getattr(settings, section)
        fixed = {k: Path(v).expanduser().resolve() for k in keys if (v := getattr(values, k)) is not None}
        update[section] = values.model_copy(update=fixed)
    return settings.model_copy(update=update)


def write_config(run_dir: Path, settings_json: dict[str, Any], sources: dict[str, str]) -> None:
    comments = {key: f"from {origin}" for key, origin in sources.items()}
    atomic_write_text(run_dir / "config.toml", dumps(settings_json, comments))


def comparable(settings_json: dict[str, Any]) -> dict[str, Any]:
    """Settings as ``config.toml`` records them, by dotted key: lists for tuples, and no unset value
    (None) or empty table, which the TOML writer leaves out; a run's recorded config and the same
    settings resolved again compare equal."""
    flat = flatten(json.loads(json.dumps(settings_json)))  # tuples -> lists, as TOML reads them back
    return {key: value for key, value in flat.items() if value is not None and value != {}}


def changed_settings(run_dir: Path, settings_json: dict[str, Any]) -> list[str]:
    """Lines ``key: old -> new`` for settings that differ from the run's recorded config (both in their
    normalised form, so an unchanged run has none)."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return []
    old = comparable(read_toml(path, "run config"))
    new = comparable(settings_json)
    lines = []
    for key in [*new, *(k for k in old if k not in new)]:
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {shown(old.get(key))} -> {shown(new.get(key))}")
    return lines


def step_of(checkpoint: Path) -> int | None:
    """The step of a ``checkpoints/step_<n>`` folder; None for any other name (``.tmp_step_<n>``,
    ``unusable_step_<n>``)."""
    match = _STEP_DIR.match(Path(checkpoint).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            step = step_of(path)
            if step is not None and (path / STATE_FILE).is_file():
                found.append((step, path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1][1] if found else None


def read_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{checkpoint}: not a complete checkpoint (no {STATE_FILE})")
    state = read_json(path, "trainer state")
    if not isinstance(state, dict):
        raise UserError(f"{path}: trainer state is not a JSON table (found a {type(state).__name__})")
    return state


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Accelerate state + trainer state into ``checkpoints/step_<step>``; prune beyond ``keep``.

    A write that fails (a full disk: one line naming the file, whichever serializer wrote it) removes
    the partial ``.tmp_step_<step>`` and leaves the previous checkpoints as they were.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        _guarded(tmp, final, lambda: tmp.mkdir(parents=True), cleanup=False)
    accelerator.wait_for_everyone()
    _guarded(tmp, final, lambda: accelerator.save_state(str(tmp), safe_serialization=True), cleanup=main)
    accelerator.wait_for_everyone()
    if main:
        _guarded(tmp, final, lambda: _complete(tmp, final, state), cleanup=True)
        for _, old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _complete(tmp: Path, final: Path, state: dict[str, Any]) -> None:
    atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))  # last: marks it complete
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _guarded(tmp: Path, final: Path, write: Callable[[], Any], cleanup: bool) -> None:
    """Run ``write``; on failure remove the partial checkpoint ``tmp`` (``cleanup``) and raise a full
    disk as one line naming the file being written, by the name it was to have in ``final`` (the
    serializers' own errors name none)."""
    try:
        write()
    except BaseException as exc:
        newest = _newest_file(tmp)
        target = final / newest.relative_to(tmp) if newest != tmp else final
        failure = write_failure(target, exc)  # before the removal: the free space is the writer's
        if cleanup:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from None
        raise


def _newest_file(folder: Path) -> Path:
    """The file last written in ``folder`` (the one a failed save was writing), else the folder."""
    try:
        files = [p for p in Path(folder).rglob("*") if p.is_file()]
        return max(files, key=lambda p: p.stat().st_mtime_ns) if files else Path(folder)
    except OSError:
        return Path(folder)


def find_resume(resume: str, run_dir: Path | None, runs_root: Path) -> tuple[Path, Path]:
    """(run dir, checkpoint dir) for ``--resume`` (``latest``) or ``--resume PATH``."""
    if resume != "latest":
        path = Path(resume)
        if (path / STATE_FILE).is_file():
            return path.parent.parent, path
        if path.is_dir():
            ckpt = latest_checkpoint(path)
            if ckpt is None:
                raise UserError(f"{path}: no complete checkpoint to resume from")
            return path, ckpt
        raise UserError(f"{path}: not a run directory or checkpoint")
    if run_dir is None:
        runs = [p for p in Path(runs_root).glob("*/") if latest_checkpoint(p) is not None]
        if not runs:
            raise UserError(f"--resume: no run with a checkpoint under {runs_root}/")
        run_dir = max(runs, key=lambda p: latest_checkpoint(p).stat().st_mtime)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"{run_dir}: no complete checkpoint to resume from")
    return run_dir, ckpt
