"""Inference checkpoints: ``<name>.safetensors`` (weights) + ``<name>.json`` (card). No pickle anywhere.

The card carries everything needed to rebuild the model and use its output: resolved settings,
class names, palette, the student chosen by validation, step, metrics and library versions;
``students`` (default 2) is how many students the weights hold (1 for one-network imports).
Writes are atomic (``core.atomic``), so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dupl_cli.core.atomic import atomic_write, atomic_write_text
from dupl_cli.core.errors import UserError
from dupl_cli import __version__
from dupl_cli.core.textfile import read_text
from dupl_cli.config.sources import card_settings
from dupl_cli.models.dual import build_dual_student
from dupl_cli.runs.run_index import LATEST

CARD_FORMAT = "dupl-checkpoint/1"


def versions() -> dict[str, str]:
    import timm

    return {"dupl": __version__, "torch": torch.__version__, "timm": timm.__version__}


def card_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_model(path: Path, model: torch.nn.Module, card: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and its card; the card gets format and versions filled in."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    full_card = {"format": CARD_FORMAT, "versions": versions(), **card}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": CARD_FORMAT}))
    atomic_write_text(card_path(path), json.dumps(full_card, indent=2))
    return path


def read_card(path: Path) -> dict[str, Any]:
    card_file = card_path(path)
    if not card_file.is_file():
        raise UserError(f"{card_file}: checkpoint card is missing (it must sit beside {Path(path).name})")

    try:
        card = json.loads(read_text(card_file, "checkpoint card"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{card_file}: checkpoint card is not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise UserError(f"{card_file}: not a dupl checkpoint card (format {found!r})")
    problem = card_problem(card)
    if problem:
        raise UserError(f"{card_file}: {problem}")
    return card


def card_problem(card: dict[str, Any]) -> str | None:
    """What is wrong inside a card that parses (the fields every command relies on), or None."""
    students = card.get("students", 2)
    if students not in (1, 2):
        return f"'students' must be 1 or 2, not {students!r}"
    classes = card.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c.strip() for c in classes)):
        return f"'classes' must be a non-empty list of class names, not {classes!r:.80}"
    if len(set(classes)) != len(classes):
        return f"'classes' repeats a name: {sorted({c for c in classes if classes.count(c) > 1})}"
    palette = card.get("palette")
    rgb = lambda c: isinstance(c, list) and len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c)  # noqa: E731
    if not (isinstance(palette, list) and len(palette) == len(classes) + 1 and all(map(rgb, palette))):
        return f"'palette' must list {len(classes) + 1} [r, g, b] colours (background and each class)"
    student = card.get("student", 1)
    if type(student) is not int or not 1 <= student <= students:
        return f"'student' must be 1{' or 2' if students == 2 else ''}, not {student!r}"
    if card.get("step") is not None and (type(card["step"]) is not int or card["step"] < 0):
        return f"'step' must be a whole number >= 0, not {card['step']!r}"
    if not isinstance(card.get("settings"), dict):
        return "checkpoint card has no settings table"
    return None


def card_students(card: dict[str, Any]) -> int:
    """How many students a checkpoint holds (cards without the field come from two-student training)."""
    return int(card.get("students", 2))


def settings_from_card(card: dict[str, Any], card_file: Path):
    """The settings a checkpoint was trained with, through the settings loader (errors name the card)."""
    return card_settings(card_file, card.get("settings"))


def load_model(path: Path, map_location: str | torch.device = "cpu"):
    """Rebuild the DualStudent of a checkpoint; returns ``(model, card)``. Weights never downloaded."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint does not exist")
    card = read_card(path)
    settings = settings_from_card(card, card_path(path))
    model_settings = settings.model.model_copy(update={"pretrained": "none"})
    try:
        model = build_dual_student(
            model_settings, num_classes=len(card["classes"]), img_size=settings.data.crop_size,
            students=card_students(card),
        )  # fmt: skip
    except UserError as exc:  # e.g. a model name no installed backbone knows: say whose card it is
        raise UserError(f"{card_path(path)}: cannot build its model: {exc}", exc.exit_code) from None
    try:
        state = load_file(str(path))  # to CPU; the model moves as a whole below
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise UserError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: the card's classes or model settings are not the weights'
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise UserError(
            f"{path}: weights do not match its card {card_path(path)} ({len(card['classes'])} classes, "
            f"model {settings.model.arch}): {detail[:300]}"
        ) from None
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match the card's model (missing {len(missing)} keys, e.g. "
            f"{missing[:1]}; unexpected {len(unexpected)}, e.g. {unexpected[:1]})"
        )
    return model.to(map_location).eval(), card


def newest_run(runs_root: Path) -> Path | None:
    runs = [
        p
        for p in Path(runs_root).glob("*/")
        if p.name != LATEST  # the link to the newest run, which is listed anyway
        and ((p / "best.safetensors").is_file() or (p / "final.safetensors").is_file())
    ]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def resolve_checkpoint(arg: Path | None, settings) -> tuple[Path, str]:
    """The checkpoint to use and how it was chosen: explicit file or run dir, eval.checkpoint, newest run."""
    how = "given"
    if arg is None and settings.eval.checkpoint is not None:
        arg, how = settings.eval.checkpoint, "from eval.checkpoint"
    if arg is None:
        run = newest_run(settings.train.runs_root)
        if run is None:
            raise UserError(
                f"no checkpoint given and no run with a checkpoint under {settings.train.runs_root}/; "
                "pass CHECKPOINT or RUN_DIR, or set eval.checkpoint"
            )
        arg, how = run, "newest run"
    arg = Path(arg)
    if arg.is_dir():
        for name in ("best.safetensors", "final.safetensors"):
            if (arg / name).is_file():
                return arg / name, how
        raise UserError(f"{arg}: run directory has no best.safetensors or final.safetensors yet")
    if not arg.is_file():
        raise UserError(f"{arg}: checkpoint does not exist")
    return arg, how
