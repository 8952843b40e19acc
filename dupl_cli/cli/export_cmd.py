"""``dupl export``: one student of a checkpoint as safetensors, ONNX, TorchScript or a Hugging Face Hub
folder, verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import CheckpointArg, ConfigOpt, PresetOpt, SetOpt, console, resolve_settings
from dupl_cli.core.errors import UserError
from dupl_cli.predict.choices import ExportFormat, ExportStudent


def export(
    ctx: typer.Context,
    checkpoint: CheckpointArg = None,
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="safetensors, onnx, torchscript, or hf: a folder that huggingface_hub's upload_folder "
            "publishes as is (default: export.format).",
            show_default=False,
        ),
    ] = None,
    student: Annotated[
        ExportStudent | None,
        typer.Option(
            "--student",
            help="1, 2 or best (the card's choice by validation; default: export.student).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output file, or folder for hf (default: beside the checkpoint, <name>.student<k>.<ext>, "
            "<name>.student<k>-hf).",
            show_default=False,
        ),
    ] = None,
    full: Annotated[
        bool | None,
        typer.Option(
            "--full/--seg-only",
            help="Keep the classifiers (CAM outputs) or only backbone + head (hf always keeps them).",
            show_default=False,
        ),
    ] = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Export one student for deployment and check it against PyTorch at two input sizes."""
    settings = resolve_settings(ctx, preset, config, sets).settings
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.runs.checkpoint import resolve_checkpoint

    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.tasks.export import export_checkpoint

    path, how = resolve_checkpoint(checkpoint, settings)
    opts = settings.export
    fmt = fmt if fmt is not None else ExportFormat(opts.format)
    if fmt == ExportFormat.hf and full is False:
        raise UserError("--seg-only does not apply to --format hf: the folder holds the whole student")
    result = export_checkpoint(
        path,
        opts,
        fmt=fmt,  # Typer checked --format, the schema export.format: both hold ExportFormat's names
        student=student.value if student is not None else opts.student,
        out=out,
        full=opts.full if full is None else full,
    )
    con = console(ctx)
    con.print(f"checkpoint {path} ({how}), student {result.student}")
    for check in result.checks:
        size = "x".join(str(s) for s in check["size"])
        con.print(
            f"  checked at {size}: max abs logit difference {check['max_abs_diff']:.2e} (atol {opts.atol:g})"
        )
    log = f" (exporter log: {result.log})" if result.log else ""
    if fmt == ExportFormat.hf:
        con.print(f"wrote {result.path}/: model.safetensors, config.json, README.md{log}", soft_wrap=True)
        con.print(f"publish: huggingface_hub.upload_folder(repo_id='ORG/NAME', folder_path='{result.path}')")
    else:
        con.print(f"wrote {result.path} and {result.card}{log}")
