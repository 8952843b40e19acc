"""Fixed choices of the prediction commands and export, and the one parser of the student choice.

Torch-free: the CLI builds its Typer enums from these classes, so ``--help`` lists the values and a
bad one is Typer's usage error.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dupl_cli.core.errors import UserError


class StudentChoice(str, Enum):
    """The student used for predictions: one of the two, the card's (chosen by validation), or both."""

    one = "1"
    two = "2"
    best = "best"
    ensemble = "ensemble"


class ExportStudent(str, Enum):
    """An export holds one student."""

    one = "1"
    two = "2"
    best = "best"


class LabelSource(str, Enum):
    """Where pseudo-labels come from: multi-scale CAM with the image labels, or the segmentation head."""

    cam = "cam"
    seg = "seg"


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    onnx = "onnx"
    torchscript = "torchscript"
    hf = "hf"  # a folder for the Hugging Face Hub: model.safetensors, config.json, README.md


@dataclass(frozen=True)
class StudentPick:
    indices: tuple[int, ...]  # 0-based students whose outputs are averaged
    text: str  # why these, for protocols and reports


def choose_students(
    choice: str | Enum,
    card_student: int,
    allowed: type[Enum] = StudentChoice,
    *,
    students: int = 2,
    rule: str = "best by validation during training",
) -> StudentPick:
    """``choice`` (``1``, ``2``, ``best`` or ``ensemble``) -> students of a checkpoint holding
    ``students``; ``best`` is the card's pick (``rule`` says how it was made), never the evaluated
    split's ground truth."""
    value = choice.value if isinstance(choice, Enum) else str(choice)
    names = [member.value for member in allowed]
    if value not in names:
        listed = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise UserError(f"--student must be {listed}, not {value!r}")
    if students == 1 and value in ("2", "ensemble"):
        raise UserError(f"the checkpoint holds one student; --student {value} needs two (use 1 or best)")
    if value == "ensemble":
        return StudentPick((0, 1), "ensemble of both students (mean of logits)")
    if value in ("1", "2"):
        return StudentPick((int(value) - 1,), f"student {value} (chosen with --student)")
    chosen = int(card_student)
    return StudentPick((chosen - 1,), f"student {chosen} ({rule}, from the checkpoint card)")
