"""Stage 2 in ``dupl train`` (docs/method.md §12): with ``data.pseudo_labels`` set, the trainer builds a
one-network segmenter (``models.segmenter``), reads the training split with the pseudo-labels as masks
(``data.pseudo_labels``) and calls :class:`Stage2Module` (``method.stage2.stage2_step``) where it calls
the DuPL step otherwise. Everything else is the same engine: Accelerate, precision, DDP, gradient
accumulation, validation on the ground truth of ``data.val_split``, checkpoints, exact resume, cards and
curves. The card records what the segmenter learnt from (``runs.card.Stage2Record``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dupl_cli.core.errors import UserError
from dupl_cli.data.pseudo_labels import PseudoLabelAdapter, with_pseudo_labels
from dupl_cli.method.stage2 import Stage2Config, Stage2Result, stage2_step
from dupl_cli.runs.card import Stage2Record
from dupl_cli.runs.checkpoint import is_stage2

PHASE = "S2"
"""The phase name stage-2 progress lines and metrics.jsonl show."""


class Stage2Module(nn.Module):
    """Wraps the segmenter model as ``TrainingModule`` wraps the dual student (``.dual`` is the model),
    so one DDP forward covers the step (logits, online noise filter, loss)."""

    def __init__(self, model: nn.Module, config: Stage2Config) -> None:
        super().__init__()
        self.dual = model
        self.config = config

    def forward(
        self, batch: dict[str, Any], step: int, generator: torch.Generator | None = None
    ) -> Stage2Result:
        return stage2_step(self.dual.segmenter, batch, step, self.config)


def check_stage(settings) -> None:
    """A stage-2 head without pseudo-labels is a stage-2 preset missing its folder: say so."""
    if not is_stage2(settings) and settings.model.head != "largefov":
        raise UserError(
            f"model.head = {settings.model.head} trains a stage-2 segmenter on pseudo-labels: set "
            "data.pseudo_labels to the folder `dupl pseudo-label --out DIR` wrote"
        )


def wants_confidence(settings) -> bool:
    return settings.method.stage2_weights == "confidence"


def pseudo_label_split(adapter, settings) -> PseudoLabelAdapter:
    """The training split with its pseudo-labels, the folder checked against it first."""
    return with_pseudo_labels(adapter, settings.data, need_confidence=wants_confidence(settings))


def stage2_record(train_set, settings) -> Stage2Record:
    """The card's ``stage2`` table from the pseudo-label folder's record and the loss settings."""
    meta = train_set.meta  # a PseudoLabelAdapter, or a SubsetAdapter of one
    scores = meta.get("metrics") or {}
    method = settings.method
    loss = ["cross-entropy over the certain pixels (255 ignored)"]
    loss += ["confidence-weighted"] if wants_confidence(settings) else []
    loss += [f"online noise filter from step {method.stage2_anf_start}"] if method.stage2_anf else []
    return Stage2Record(
        pseudo_labels=str(settings.data.pseudo_labels),
        made_from=str(meta.get("checkpoint")),
        split=str(meta.get("split")),
        source=str(meta.get("source")),
        crf=bool(meta.get("crf")),
        pseudo_miou=scores.get("miou"),
        head=settings.model.head,
        loss="; ".join(loss),
    )
