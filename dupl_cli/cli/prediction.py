"""Options and set-up shared by the prediction commands (evaluate, infer, pseudo-label, submit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import global_options, resolve_settings
from dupl_cli.core.errors import UserError
from dupl_cli.plugins import DATASETS, load
from dupl_cli.predict.choices import StudentChoice
from dupl_cli.runs.card import read_card

StudentOpt = Annotated[
    StudentChoice | None,
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
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write a self-contained HTML report here.")]


def prepare(ctx, preset, config, sets, checkpoint: Path | None, student: StudentChoice | None, use_crf: bool):
    """Settings, runtime and model for evaluate / infer / pseudo-label.

    Without --preset/--config the settings are the checkpoint card's (so data and model match the
    training run), still overridden by env and --set.
    """
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.runs.checkpoint import resolve_checkpoint

    if student is not None and student not in ("1", "2", "best", "ensemble"):
        raise UserError(f"--student must be 1, 2, best or ensemble, not {student!r}")
    resolved = resolve_settings(ctx, preset, config, sets)
    path, how = resolve_checkpoint(checkpoint, resolved.settings)
    opts = global_options(ctx)
    if not (preset or config or opts.preset or opts.config):
        card = read_card(path)
        resolved = resolve_settings(ctx, sets=sets, card=(card.file, card.settings))
    settings = resolved.settings
    if use_crf:
        # here, not at the top: it loads torch, which `dupl --help` must not
        from dupl_cli.crf.dense import check_backend

        check_backend(settings.crf.backend)  # fail before loading anything
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.predict.loop import load_for_inference, make_runtime

    runtime = make_runtime()
    loaded = load_for_inference(path, how, runtime.device)
    return settings, runtime, loaded, student.value if student is not None else settings.eval.student


def build_adapter(settings, split: str):
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
