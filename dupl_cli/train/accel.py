"""The Accelerator for training and inference, with the CPU and precision traps handled once."""

from __future__ import annotations

from pathlib import Path

import torch

from dupl_cli.core.errors import UserError


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
    tracker: str = "none",
    seedable_sampler: bool = True,
):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    # Without CUDA a plain Accelerator under torchrun gives independent runs; cpu=True makes it gloo DDP.
    cpu = not torch.cuda.is_available()
    # Losses switch on by phase, so some parameters get no gradient in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    log_with = None
    if tracker == "tensorboard" and project_dir is not None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError(
                'train.tracker = "tensorboard" needs the tb extra: pip install "dupl[tb]"'
            ) from None
        log_with = "tensorboard"
    return Accelerator(
        cpu=cpu,
        mixed_precision=resolve_precision(precision),
        gradient_accumulation_steps=grad_accum,
        project_dir=str(project_dir) if project_dir else None,
        log_with=log_with,
        kwargs_handlers=[ddp],
        # Batches arrive in pinned memory (the loaders pin on CUDA): copy them without waiting for
        # the device, which a blocking copy would (a host sync per step).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=seedable_sampler, non_blocking=True),
        step_scheduler_with_optimizer=False,
    )
