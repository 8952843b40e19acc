"""Resume from the newest checkpoint that loads, falling back to older complete ones (and saying so).

A corrupt or hostile file in the newest checkpoint (a truncated model file, an ``optimizer.bin``
that is not plain tensors) is named in one line and the previous checkpoint is tried; an RNG state
Accelerate cannot load, which it skips quietly, is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dupl_cli.core.errors import UserError, load_reason
from dupl_cli.runs import run_dir as runs


class _RngSkipped(logging.Handler):
    """Watches Accelerate's checkpoint log for the skipped RNG state (logged at INFO only) and passes
    on only what would have shown anyway (``forward``: the level the logger had): not its five
    "... loaded successfully" lines."""

    def __init__(self, logger: logging.Logger, forward: int) -> None:
        super().__init__(logging.INFO)
        self.skipped = False
        self.logger, self.forward = logger, forward

    def emit(self, record: logging.LogRecord) -> None:
        self.skipped = self.skipped or "Could not load random states" in record.getMessage()
        if record.levelno >= self.forward and self.logger.parent is not None:
            self.logger.parent.handle(record)


def _load_one(accelerator, ckpt: Path, report: Callable[[str], None]) -> dict[str, Any]:
    state = runs.read_state(ckpt)
    logger = logging.getLogger("accelerate.checkpointing")
    level, propagate = logger.level, logger.propagate
    watch = _RngSkipped(logger, logger.getEffectiveLevel())
    logger.addHandler(watch)
    logger.setLevel(logging.INFO)  # the skip is only logged at INFO
    logger.propagate = False  # the watch passes on what would have shown
    try:
        accelerator.load_state(str(ckpt))
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)
        logger.propagate = propagate
    _check_finite(accelerator)
    if watch.skipped:
        rng = ckpt / f"random_states_{accelerator.process_index}.pkl"
        report(
            f"warning: {rng}: random state not loaded (missing, corrupt or not plain data); "
            "continuing with fresh random state, so the run will not match an uninterrupted one"
        )
    return state


def _check_finite(accelerator) -> None:
    """A checkpoint whose weights are not all finite (written by a diverged run before issue 26) is
    not resumed: one host read of one device reduction over the loaded models."""
    tensors = [
        t for model in accelerator._models for t in model.state_dict().values() if t.is_floating_point()
    ]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise ValueError("holds non-finite weights (a run that diverged wrote it)")


def load_resume(
    accelerator, run_dir: Path, newest: Path, report: Callable[[str], None]
) -> tuple[dict[str, Any], Path]:
    """(trainer state, checkpoint used): ``newest`` first, then each older complete checkpoint."""
    older = [path for _, path in reversed(runs.checkpoint_dirs(run_dir)) if path != newest]
    failures = []
    for ckpt in [newest, *older]:
        try:
            state = _load_one(accelerator, ckpt, report)
        except (
            Exception
        ) as exc:  # torch / safetensors / accelerate / JSON errors on a corrupt or hostile file
            failures.append(f"{ckpt}: {load_reason(exc)}")
            report(f"warning: cannot resume from {failures[-1]}")
            continue
        for bad in failures:  # set aside, so rotation never deletes a good checkpoint to keep them
            path = Path(bad.split(": ", 1)[0])
            if accelerator.is_main_process and path.is_dir():
                path.rename(path.with_name(f"unusable_{path.name}"))
        if failures:
            report(
                f"warning: fell back to {ckpt} (step {state.get('step')}); the newer checkpoint(s) did not "
                "load and were renamed unusable_step_<n>"
            )
        return state, ckpt
    raise UserError(f"{run_dir}: no checkpoint can be resumed ({'; '.join(failures)})")
