"""``dupl evaluate``: per-class IoU / precision / recall, mIoU, pixel accuracy, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import (
    CheckpointArg,
    ConfigOpt,
    PresetOpt,
    SetOpt,
    console,
    global_options,
)
from dupl_cli.cli.prediction import (
    CrfOpt,
    MultiscaleOpt,
    ReportOpt,
    StudentOpt,
    build_adapter,
    metrics_table,
    prepare,
    print_protocol,
)


def evaluate(
    ctx: typer.Context,
    checkpoint: CheckpointArg = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split to evaluate (default: eval.split).")
    ] = None,
    multiscale: MultiscaleOpt = False,
    crf: CrfOpt = False,
    student: StudentOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output folder (default: <run>/eval/<split>-<source>[-ms][-crf][-first<N>])."
        ),
    ] = None,
    max_images: Annotated[
        int, typer.Option("--max-images", min=0, help="Evaluate only the first N images (0 = all).")
    ] = 0,
    cams: Annotated[
        bool,
        typer.Option("--cams", help="Evaluate the CAM pseudo-labels (GT image labels) instead of the head."),
    ] = False,
    report: ReportOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Evaluate a checkpoint on a labelled split: rich table, metrics.json, confusion CSV/PNG."""
    settings, runtime, loaded, student_name = prepare(ctx, preset, config, sets, checkpoint, student, crf)
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.tasks.evaluate import EvalRequest, capped_tag, run_evaluate

    out_console = console(ctx)
    split = split or settings.eval.split
    tag = f"{split}-{'cams' if cams else 'seg'}{'-ms' if multiscale else ''}{'-crf' if crf else ''}"
    tag += capped_tag(max_images or settings.eval.max_images)  # a capped run never lands on a full one
    out = out or loaded.path.parent / "eval" / tag
    if runtime.is_main:
        out_console.print(f"checkpoint: {loaded.path} ({loaded.how})")
    adapter = build_adapter(settings, split)
    req = EvalRequest(
        split=split,
        out=out,
        multiscale=multiscale,
        crf=crf,
        student=student_name,
        max_images=max_images,
        cams=cams,
        report=report,
    )
    show = global_options(ctx).verbosity >= 0
    result = run_evaluate(loaded, adapter, settings, runtime, req, show_progress=show, log=out_console.print)
    if runtime.is_main:
        # the checkpoint line came first, before the (long) evaluation
        print_protocol(out_console, {k: v for k, v in result.protocol.items() if k != "checkpoint"})
        out_console.print(
            metrics_table(result.metrics, f"{'CAM pseudo-labels' if cams else 'segmentation'} on {split}")
        )
        out_console.print(
            f"wrote {out / 'metrics.json'}, confusion.csv, confusion.png" + (f", {report}" if report else "")
        )
