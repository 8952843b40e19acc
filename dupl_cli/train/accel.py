"""The Accelerator for training and inference, with the CPU and precision traps handled once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dupl_cli.train.trackers import check_packages, tracker_names


def resolve_precision(precision: str) -> str:
    """``auto`` is bf16 on CUDA devices that support it, else full precision."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(
    precision: str = "auto",
    grad_accum: int = 1,
    project_dir: Path | None = None,
    tracker: str | Sequence[str] = "none",
    seedable_sampler: bool = True,
):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

    # Without CUDA a plain Accelerator under torchrun gives independent runs; cpu=True makes it gloo DDP.
    cpu = not torch.cuda.is_available()
    # Losses switch on by phase, so some parameters get no gradient in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    names = tracker_names(tracker) if project_dir is not None else []
    check_packages(names)  # before training starts: one line naming the extra to install
    # The trackers that write files write them under <run>/events (TensorBoard: events/dupl).
    project = None
    if project_dir is not None:
        events = str(Path(project_dir) / "events")
        project = ProjectConfiguration(project_dir=str(project_dir), logging_dir=events)
    return Accelerator(
        cpu=cpu,
        mixed_precision=resolve_precision(precision),
        gradient_accumulation_steps=grad_accum,
        project_config=project,
        log_with=names or None,
        kwargs_handlers=[ddp],
        # Batches arrive in pinned memory (the loaders pin on CUDA): copy them without waiting for
        # the device, which a blocking copy would (a host sync per step).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=seedable_sampler, non_blocking=True),
        step_scheduler_with_optimizer=False,
    )
