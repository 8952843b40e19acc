"""Where a training run stands: :class:`TrainState`, kept by the loop and its hooks and stored in
each checkpoint as ``trainer_state.json`` (what a resume starts from)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Validation:
    """A validation's mIoU (%) by ``{kind}_s{k}`` (kind cam, aux_cam, seg; k each student)."""

    step: int
    scores: dict[str, float]


@dataclass
class BestModel:
    """The best validation so far under ``train.select = best-val``: the student with the best seg
    mIoU (1-based), that mIoU, and all the validation's scores."""

    step: int
    score: float
    student: int
    scores: dict[str, float]


@dataclass
class TrainState:
    step: int = 0  # optimiser steps taken, skipped non-finite ones included
    best: BestModel | None = None
    bad_in_row: int = 0  # non-finite steps in a row, as last read from the device
    last: Validation | None = None  # the latest validation (its scores go on the final card)

    def to_json(self) -> dict[str, Any]:
        """The content of ``trainer_state.json``, keys in the order checkpoints have always had them
        (``last`` once a validation has run)."""
        data: dict[str, Any] = {
            "step": self.step,
            "best": None if self.best is None else asdict(self.best),
            "bad_in_row": self.bad_in_row,
        }
        if self.last is not None:
            data["last"] = asdict(self.last)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        """The state :meth:`to_json` wrote (a checkpoint's ``trainer_state.json``)."""
        best, last = data.get("best"), data.get("last")
        return cls(
            step=int(data["step"]),
            best=None if best is None else BestModel(**best),
            bad_in_row=int(data.get("bad_in_row", 0)),
            last=None if last is None else Validation(**last),
        )
