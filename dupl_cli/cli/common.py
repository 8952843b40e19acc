"""Options shared by every command and the settings they resolve to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from dupl_cli.config.sources import load_settings

CheckpointArg = Annotated[
    Path | None,
    typer.Argument(
        help="Checkpoint .safetensors, run directory, hf export folder or hf-hub:org/name (default: "
        "eval.checkpoint, else the newest run).",
        show_default=False,
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Built-in preset name or path to a preset TOML.", show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (same format as a preset).", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one setting: section.key=value (TOML literal). Repeatable.",
        show_default=False,
    ),
]


@dataclass
class GlobalOptions:
    preset: str | None = None
    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    verbosity: int = 0  # -1 quiet, 0 normal, 1 verbose


def global_options(ctx: typer.Context) -> GlobalOptions:
    root = ctx.find_root()
    if not isinstance(root.obj, GlobalOptions):
        root.obj = GlobalOptions()
    return root.obj


def resolve_settings(
    ctx: typer.Context,
    preset: str | None = None,
    config: Path | None = None,
    sets: list[str] | None = None,
    card: tuple[Path, Any] | None = None,
):
    """Settings from the global options overlaid with the command's own (the command's win).

    ``card`` (card file, its settings) is the lowest source above the defaults. With -v, names the
    adapter options dropped because another adapter was chosen above them.
    """
    opts = global_options(ctx)
    resolved = load_settings(
        preset=preset or opts.preset,
        config_file=config or opts.config,
        assignments=[*opts.sets, *(sets or [])],
        card=card,
    )
    if opts.verbosity > 0:  # also listed by config show --explain
        for note in resolved.ignored:
            console(ctx, stderr=True).print(f"note: ignored {note}", soft_wrap=True, markup=False)
    return resolved


def console(ctx: typer.Context | None = None, stderr: bool = False):
    from rich.console import Console

    quiet = ctx is not None and global_options(ctx).verbosity < 0
    # soft_wrap: long lines (paths) are not broken mid-word when piped into a file or another program
    return Console(stderr=stderr, quiet=quiet, highlight=False, soft_wrap=True)
