"""``dupl import release``: the authors' published checkpoints as dupl run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import ConfigOpt, PresetOpt, SetOpt, console, global_options, resolve_settings
from dupl_cli.core.errors import UserError

app = typer.Typer(help="Bring checkpoints trained elsewhere into dupl.", no_args_is_help=True)


RELEASE_HELP = (
    "Turn a DuPL release checkpoint (branch1/branch2, with DDP's module. prefix or not) or a ToCo "
    "one-network checkpoint into RUN_DIR/final.safetensors + card + config.toml, "
    "for `dupl evaluate RUN_DIR`.\n\n"
    "--preset names the model and data the weights were trained with: voc-vitb (PASCAL VOC) or coco-vitb "
    "(MS COCO).\n\n"
    "The file is read with torch.load(weights_only=True): a file that needs to unpickle Python objects is "
    "refused. Every key must map onto dupl's model; only the backbone's unused ImageNet head and ToCo's "
    "training-only projection heads are dropped (and listed on the card). Otherwise the import stops, "
    "naming the unmapped, missing and mis-shaped keys."
)


@app.command("release", help=RELEASE_HELP)
def release(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="The release's .pth (torch.save'd state dict).", show_default=False)
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="New run directory to create (never overwritten).", show_default=False
        ),
    ],
    student: Annotated[
        int,
        typer.Option(
            "--student",
            min=1,
            max=2,
            help="Student the card names for --student best (no validation runs at import).",
        ),
    ] = 1,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    opts = global_options(ctx)
    if not (preset or config or opts.preset or opts.config):
        raise UserError(
            "dupl import release needs --preset (voc-vitb or coco-vitb): it fixes model and classes"
        )
    resolved = resolve_settings(ctx, preset, config, sets)
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.runs.release_import import import_release, preset_classes

    classes, palette = preset_classes(resolved.settings)
    result = import_release(file, out, resolved.settings, resolved.sources, classes, palette, student=student)
    con = console(ctx)
    say = lambda text: con.print(text, markup=False, soft_wrap=True)  # noqa: E731 (paths stay copyable)
    say(f"{file}: {result.layout}, {result.mapped} tensors mapped")
    if result.dropped:
        say(f"dropped {len(result.dropped)} tensors unused at inference (listed on the card)")
    say(
        f"wrote {result.weights} and its card; "
        f"evaluate with: dupl evaluate {result.run_dir} --multiscale --crf"
    )
