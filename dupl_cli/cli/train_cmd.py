"""``dupl train``: run DuPL training (single process, or under ``accelerate launch`` / ``torchrun``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import ConfigOpt, PresetOpt, SetOpt, global_options, resolve_settings


def train(
    ctx: typer.Context,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run directory (default: runs/<preset>-<time>).")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue from the latest checkpoint (of --run-dir or the newest run), or from PATH "
            "(a run dir or checkpoint).",
            metavar="[PATH]",
        ),
    ] = None,
    max_iters: Annotated[
        int | None,
        typer.Option(
            "--max-iters", min=1, help="Stop after this iteration; the schedule is unchanged (resume later)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Build everything, one forward/backward per phase on two samples, write nothing.",
        ),
    ] = False,
) -> None:
    """Train DuPL. Multi-GPU: accelerate launch -m dupl_cli train ... (CPU data parallel: torchrun)."""
    resolved = resolve_settings(ctx, preset, config, sets)
    scheduled = resolved.settings.train.max_iters
    if max_iters is not None and max_iters > scheduled:
        typer.echo(
            f"warning: --max-iters {max_iters} is past the end of the schedule (train.max_iters = "
            f"{scheduled}): training stops at {scheduled}. --max-iters only stops early; to train longer "
            f"lengthen the schedule with --set train.max_iters={max_iters} (and method.t_seg, method.t_anf, "
            "train.warmup_iters to match)",
            err=True,
        )
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.train.trainer import Trainer, TrainOptions

    options = TrainOptions(
        run_dir=run_dir,
        resume=resume,
        stop_at=max_iters,
        dry_run=dry_run,
        preset=resolved.preset,
        sources=resolved.sources,
        quiet=global_options(ctx).verbosity < 0,
    )
    Trainer(resolved.settings, options).run()
