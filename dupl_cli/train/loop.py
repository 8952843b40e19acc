"""The training loop: :func:`optimizer_step`, the one optimiser step ``dupl train`` takes, and
:func:`train_loop`, which takes them over the loader and calls the hooks (``train.hooks``) after each.

The loop itself keeps nothing: where it stands is the :class:`~dupl_cli.train.state.TrainState`,
and logging, validation, model selection and checkpoints are hooks, each with its own state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from dupl_cli.method import step as method_step
from dupl_cli.method.params import StepConfig
from dupl_cli.train.state import TrainState
from dupl_cli.train.step_guard import NonFiniteGuard

if TYPE_CHECKING:  # annotations only: accelerate is imported where an Accelerator is made (train.accel)
    from accelerate import Accelerator


class TrainingModule(nn.Module):
    """Wraps the dual student so one DDP forward covers the whole step (CAMs, labels, losses)."""

    def __init__(self, dual: nn.Module, config: StepConfig) -> None:
        super().__init__()
        self.dual = dual
        self.config = config

    def forward(
        self, batch: dict[str, Any], step: int, generator: torch.Generator | None = None
    ) -> method_step.StepResult:
        # looked up on the module at each call, so a test can wrap training_step
        return method_step.training_step(self.dual, batch, step, self.config, generator=generator)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The strong view's randomness is a function of (seed, step): identical after a resume.

    A CPU generator on every device: the step draws its few op indices on the host (a device
    generator would not fit ``torch.randint`` on the host, and a device draw would need a read).
    """
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + step) % (2**63))
    return generator


@dataclass(frozen=True)
class TrainParts:
    """What an optimiser step works on, after ``accelerator.prepare``."""

    accelerator: Accelerator
    module: nn.Module  # the prepared TrainingModule (DDP-wrapped when data parallel)
    optimizer: torch.optim.Optimizer  # the prepared build_optimizer(...)
    scheduler: Any  # the prepared build_scheduler(...): accelerate's AcceleratedScheduler
    guard: NonFiniteGuard
    seed: int  # train.seed: with the step, it seeds the strong view (step_generator)

    @property
    def model(self) -> nn.Module:
        """The unwrapped dual student."""
        return self.accelerator.unwrap_model(self.module).dual


class StepOutcome(NamedTuple):
    result: method_step.StepResult  # of the step's last micro-batch
    bad: torch.Tensor  # 0-dim bool on the device: a loss was not finite on some process; step skipped
    bad_on_host: bool  # the guard had to read the verdict on the host (no device skip) and it was bad


def optimizer_step(
    parts: TrainParts, micro_batches: Iterator[dict[str, Any]], step: int
) -> StepOutcome | None:
    """One optimiser step exactly as ``dupl train`` takes it; None when ``micro_batches`` is empty.

    Takes micro-batches from ``micro_batches`` until Accelerate syncs gradients (``train.grad_accum``
    of them, fewer at the end of a prepared loader). Each: the method's step at ``step`` (forward and
    losses, strong view seeded by :func:`step_generator`), ``accelerator.backward``. Then every
    process agrees on the non-finite verdict (one device reduction), the guard takes the optimiser
    step unless it is bad (train.step_guard), ``scheduler.step()`` and ``zero_grad``.
    """
    accelerator = parts.accelerator
    bad_micro = torch.zeros((), device=accelerator.device)
    taken = 0
    for batch in micro_batches:
        taken += 1
        with accelerator.accumulate(parts.module):
            result = parts.module(batch, step, step_generator(parts.seed, step))
            bad_micro = bad_micro + (~torch.isfinite(result.loss.detach())).float()
            accelerator.backward(result.loss)
            if accelerator.sync_gradients:
                # Every process must agree to skip a bad step: the verdict is reduced on the device.
                bad = accelerator.reduce(bad_micro, "sum") > 0
                # True/False only where the optimiser cannot skip on the device (the guard read it)
                verdict = parts.guard.step(bad, result.terms, step)
                parts.scheduler.step()
                parts.optimizer.zero_grad(set_to_none=True)
                return StepOutcome(result, bad, verdict is True)
    if taken:
        raise ValueError(f"the micro-batches ended after {taken}, before gradients were synced for a step")
    return None


@dataclass
class StepEvents:
    """What one step produced, handed from hook to hook in order: the outcome, then what earlier
    hooks add for later ones."""

    outcome: StepOutcome
    record: dict[str, Any] | None = None  # the log interval's means (LogHook, on a log step)
    scores: dict[str, float] | None = None  # mIoU % by {kind}_s{k} (ValidationHook, on a validation step)
    best_student: int | None = None  # the student with the best seg mIoU in ``scores`` (ties: 1)


class HookBase:
    """A hook of :func:`train_loop` (detectron2's HookBase): ``before_train`` once, ``after_step``
    after every optimiser step (``state.step`` already counts it), ``after_train`` once when the
    loop reaches its stop. Hooks run in list order; each keeps its own state."""

    def before_train(self, state: TrainState) -> None:
        pass

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        pass

    def after_train(self, state: TrainState) -> None:
        pass


def train_loop(
    parts: TrainParts,
    loader: Any,
    state: TrainState,
    hooks: Sequence[HookBase],
    *,
    stop: int,
    grad_accum: int,
) -> None:
    """Optimiser steps from ``state.step`` until ``stop``, each followed by every hook's after_step.

    ``loader``: the prepared, non-empty training loader; a resumed run skips the micro-batches its
    epoch already used, so the batches are those of an uninterrupted run.
    """
    epoch, offset = divmod(state.step * grad_accum, len(loader))
    for hook in hooks:
        hook.before_train(state)
    while state.step < stop:
        loader.set_epoch(epoch)
        micro_batches = iter(parts.accelerator.skip_first_batches(loader, offset) if offset else loader)
        while state.step < stop:
            outcome = optimizer_step(parts, micro_batches, state.step)
            if outcome is None:
                break  # the epoch's batches are used up
            state.step += 1
            events = StepEvents(outcome)
            for hook in hooks:
                hook.after_step(state, events)
        epoch, offset = epoch + 1, 0
    for hook in hooks:
        hook.after_train(state)
