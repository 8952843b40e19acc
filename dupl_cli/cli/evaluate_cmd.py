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
    resolve_settings,
)
from dupl_cli.engine.choices import Student

StudentOpt = Annotated[
    Student | None,
    typer.Option(
        "--student",
        help="1, 2, best (chosen by validation, from the card) or ensemble. Default: eval.student.",
        show_default=False,
    ),
]
CrfOpt = Annotated[
    bool,
    typer.Option(
        "--crf", help="Dense CRF post-processing (crf.backend: torch, or pydensecrf from the crf extra)."
    ),
]
MultiscaleOpt = Annotated[
    bool, typer.Option("--multiscale", help="Multi-scale + flip TTA (eval.scales, eval.flip).")
]


def prepare(ctx, preset, config, sets, checkpoint: Path | None, student: Student | None, use_crf: bool):
    """Settings, runtime and model for evaluate / infer / pseudo-label.

    Without --preset/--config the settings are the checkpoint card's (so data and model match the
    training run), still overridden by env and --set.
    """
    from dupl_cli.engine.checkpoint import card_path, read_card, resolve_checkpoint
    from dupl_cli.errors import UserError

    if student is not None and student not in ("1", "2", "best", "ensemble"):
        raise UserError(f"--student must be 1, 2, best or ensemble, not {student!r}")
    resolved = resolve_settings(ctx, preset, config, sets)
    path, how = resolve_checkpoint(checkpoint, resolved.settings)
    opts = global_options(ctx)
    if not (preset or config or opts.preset or opts.config):
        card = read_card(path)
        resolved = resolve_settings(ctx, sets=sets, card=(card_path(path), card.get("settings")))
    settings = resolved.settings
    if use_crf:
        from dupl_cli.engine.crf import check_backend

        check_backend(settings.crf.backend)  # fail before loading anything
    from dupl_cli.engine.predict import load_for_inference, make_runtime

    runtime = make_runtime()
    loaded = load_for_inference(path, how, runtime.device)
    return settings, runtime, loaded, student.value if student is not None else settings.eval.student


def build_adapter(settings, split: str):
    from dupl_cli.plugins import DATASETS, load

    return load(DATASETS, settings.data.adapter)(settings.data, split)


def metrics_table(metrics, title: str):
    from rich.table import Table

    def pct(x):
        return "–" if x != x else f"{100 * x:.1f}"

    table = Table(title=title)
    for col in ("class", "IoU", "precision", "recall", "over-activation"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for i, name in enumerate(metrics.class_names):
        label = name if metrics.present[i] else f"[dim]{name} (absent)[/dim]"
        table.add_row(
            label,
            pct(metrics.iou[i]),
            pct(metrics.precision[i]),
            pct(metrics.recall[i]),
            pct(metrics.over_activation[i]),
        )
    table.add_section()
    table.add_row("[bold]mIoU[/bold]", f"[bold]{pct(metrics.miou)}[/bold]", "", "", "")
    table.add_row("pixel accuracy", pct(metrics.pixel_accuracy), "", "", "")
    if metrics.uncertain_share:
        table.add_row("uncertain pixels", pct(metrics.uncertain_share), "", "", "")
    return table


def print_protocol(out, protocol: dict) -> None:
    for key, value in protocol.items():
        out.print(f"[bold]{key}[/bold]: {value}")


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
    report: Annotated[
        Path | None, typer.Option("--report", help="Write a self-contained HTML report here.")
    ] = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Evaluate a checkpoint on a labelled split: rich table, metrics.json, confusion CSV/PNG."""
    settings, runtime, loaded, student_name = prepare(ctx, preset, config, sets, checkpoint, student, crf)
    from dupl_cli.engine.evaluate import EvalRequest, capped_tag, run_evaluate

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
