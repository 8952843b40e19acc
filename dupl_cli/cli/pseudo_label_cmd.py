"""``dupl pseudo-label``: palette PNG pseudo-labels (255 = uncertain) for second-stage training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import CheckpointArg, ConfigOpt, PresetOpt, SetOpt, console, global_options
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
from dupl_cli.predict.choices import LabelSource


def pseudo_label(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Output folder: one <id>.png per image (resumable).")],
    checkpoint: CheckpointArg = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split to label (default: data.train_split).")
    ] = None,
    source: Annotated[
        LabelSource,
        typer.Option("--source", help="cam (multi-scale CAM + image labels) or seg (segmentation head)."),
    ] = LabelSource.cam,
    crf: CrfOpt = False,
    multiscale: MultiscaleOpt = False,
    student: StudentOpt = None,
    evaluate: Annotated[
        bool,
        typer.Option("--evaluate", help="Score the pseudo-labels against ground-truth masks when present."),
    ] = False,
    report: ReportOpt = None,
    confidence: Annotated[
        bool,
        typer.Option(
            "--confidence",
            help="Also write confidence/<id>.png: each pixel's confidence in its label (for stage 2's "
            "method.stage2_weights = confidence).",
        ),
    ] = False,
    max_images: Annotated[
        int, typer.Option("--max-images", min=0, help="Only the first N images (0 = all).")
    ] = 0,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Write pseudo-labels; already complete files are skipped, writes are atomic."""
    settings, runtime, loaded, student_name = prepare(ctx, preset, config, sets, checkpoint, student, crf)
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.tasks.infer import check_out_dir

    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.tasks.pseudo_label import PseudoLabelRequest, run_pseudo_label

    out_console = console(ctx)
    split = split or settings.data.train_split
    if runtime.is_main:
        out_console.print(f"checkpoint: {loaded.path} ({loaded.how})")
    adapter = build_adapter(settings, split)
    req = PseudoLabelRequest(
        out=check_out_dir(out),
        split=split,
        source=source.value,
        crf=crf,
        multiscale=multiscale,
        student=student_name,
        evaluate=evaluate,
        report=report,
        max_images=max_images,
        confidence=confidence,
    )
    show = global_options(ctx).verbosity >= 0
    result = run_pseudo_label(
        loaded, adapter, settings, runtime, req, show_progress=show, log=out_console.print
    )
    if runtime.is_main:
        print_protocol(out_console, result.protocol)
        if result.metrics is not None:
            out_console.print(metrics_table(result.metrics, f"pseudo-labels ({source.value}) on {split}"))
            out_console.print(f"metrics: {out.parent / (out.name + '_metrics') / 'metrics.json'}")
        out_console.print(f"pseudo-labels in {out}" + (f"; report {report}" if report else ""))
        out_console.print(f"stage 2 trains on them: dupl train --preset ... --set data.pseudo_labels={out}")
