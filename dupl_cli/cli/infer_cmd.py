"""``dupl infer``: palette PNG masks (and overlays, probabilities) for image files, folders, globs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import ConfigOpt, PresetOpt, SetOpt, console, global_options
from dupl_cli.cli.prediction import CrfOpt, MultiscaleOpt, StudentOpt, prepare


def infer(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint .safetensors, run directory, hf export folder or hf-hub:org/name (as evaluate "
            "and export take it)."
        ),
    ],
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively) or glob patterns; not a run directory."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for <name>.png masks and index.csv (input -> mask).")
    ] = Path("predictions"),
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Also write <name>_overlay.jpg (image blended with the mask).")
    ] = False,
    probs: Annotated[
        bool,
        typer.Option(
            "--probs", help="Also write <name>_probs.npz: float16 softmax at 1/4 size + class names."
        ),
    ] = False,
    multiscale: MultiscaleOpt = False,
    crf: CrfOpt = False,
    student: StudentOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Segment images of any size and mode; unreadable files are reported and skipped (exit 1).

    Masks never overwrite an input; index.csv in --out says which input became which mask.
    """
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.runs.checkpoint import hf_folder

    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.tasks.infer import check_checkpoint_arg, check_out_dir, refuse_run_dirs

    checkpoint = hf_folder(checkpoint) or check_checkpoint_arg(checkpoint)  # hf-hub: names from the cache
    refuse_run_dirs(paths)  # before --out is created
    check_out_dir(out)
    settings, runtime, loaded, student_name = prepare(ctx, preset, config, sets, checkpoint, student, crf)
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.predict.tta import TTAConfig

    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.tasks.infer import describe_checkpoint, run_infer

    out_console = console(ctx)
    err_console = console(None, stderr=True)
    if runtime.is_main:
        out_console.print(f"checkpoint: {describe_checkpoint(loaded)}", markup=False, soft_wrap=True)
    result = run_infer(
        loaded,
        paths,
        check_out_dir(out),
        settings,
        runtime,
        tta=TTAConfig.from_settings(settings.eval, multiscale=multiscale),
        student=student_name,
        use_crf=crf,
        overlay=overlay,
        probs=probs,
        show_progress=global_options(ctx).verbosity >= 0,
        log=lambda msg: err_console.print(msg, markup=False),
    )
    if runtime.is_main:
        out_console.print(
            f"wrote {result.total_written} masks to {out} (index.csv: input -> mask)", markup=False
        )
        if result.total_failed:
            err_console.print(f"{result.total_failed} input(s) failed", markup=False)
    if result.total_failed:
        raise typer.Exit(1)
