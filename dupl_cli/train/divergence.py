"""Divergence is stopped, never saved (issue 26).

Before any save (the rotating checkpoint, ``best.safetensors``, ``final.safetensors``) the
:class:`SaveGate` checks on the device that every parameter and optimiser state tensor is finite
(one reduction) and reads it with the guard's bad-step streak in one host read, at save time only:
no host sync is added to a step. Non-finite weights stop the run; a save that falls due while steps
are being skipped waits for the next good step. A run that stops names the step, the likely cause
and the last good checkpoint (:func:`diverged`), as one line (``UserError``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dupl_cli.config.schema import TrainSettings
from dupl_cli.core.errors import UserError
from dupl_cli.runs import run_dir as runs
from dupl_cli.runs.checkpoint import is_stage2
from dupl_cli.train.loop import TrainParts

LOSS_WEIGHTS = ("method.w_ptc", "method.w_dis", "method.w_seg", "method.w_reg")


def loss_weights(settings) -> tuple[str, ...]:
    """The loss-weight settings a diverged run may blame: stage 1's; a stage-2 run has none."""
    return () if is_stage2(settings) else LOSS_WEIGHTS


def all_finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """A 0-dim bool on the device: every parameter (and optimiser state tensor) is finite."""
    tensors = [p.detach() for p in model.parameters()]
    if optimizer is not None:
        for entry in getattr(optimizer, "optimizer", optimizer).state.values():
            tensors += [v for v in entry.values() if torch.is_tensor(v) and v.is_floating_point()]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    device = tensors[0].device
    return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()


def diverged(
    step: int, what: str, train: TrainSettings, run_dir: Path | None, weights: tuple[str, ...] = LOSS_WEIGHTS
) -> UserError:
    """The one line a diverged run stops with: the step, the likely cause (``train.lr``, the loss
    ``weights``, the precision), the checkpoint to resume from."""
    checkpoint = runs.latest_checkpoint(run_dir) if run_dir is not None else None
    resume = (
        f"last good checkpoint: {checkpoint} (resume it with --resume and a lower train.lr)"
        if checkpoint is not None
        else "no good checkpoint was written"
    )
    precision = "" if train.precision == "no" else f", or train.precision = {train.precision} (try no)"
    blamed = f", or a loss weight too large ({', '.join(weights)})" if weights else ""
    return UserError(
        f"step {step}: training diverged ({what}); stopped without saving. Likely cause: train.lr = "
        f"{train.lr:g} too high{blamed}{precision}; {resume}",
        exit_code=1,
    )


class SaveGate:
    """Whether a save may go ahead now: weights finite (else the run stops) and no step being skipped."""

    def __init__(
        self,
        parts: TrainParts,
        train: TrainSettings,
        run_dir: Path | None,
        weights: tuple[str, ...] = LOSS_WEIGHTS,
    ) -> None:
        self.parts, self.train, self.run_dir, self.weights = parts, train, run_dir, weights

    def ready(self, step: int) -> bool:
        """True when a save at ``step`` may be written; False while non-finite steps are being
        skipped; raises :func:`diverged` when a weight or optimiser state is not finite."""
        parts = self.parts
        finite = all_finite(parts.model, parts.optimizer).float().to(parts.guard.in_row.device)
        in_row, ok = torch.stack([parts.guard.in_row, finite]).tolist()  # the save's one host read
        if not ok:
            raise diverged(step, "the weights are not finite", self.train, self.run_dir, self.weights)
        return in_row == 0

    def stop(self, step: int) -> UserError:
        """The error when the run ends inside a streak of skipped steps (nothing left to save)."""
        what = "the loss is not finite; the last steps were skipped"
        return diverged(step, what, self.train, self.run_dir, self.weights)
