"""``dupl presets``: list and show the built-in presets."""

from __future__ import annotations

from typing import Annotated

import typer

from dupl_cli.cli.common import console
from dupl_cli.config import presets

app = typer.Typer(help="Built-in presets.", no_args_is_help=True)


@app.command("list")
def list_presets(ctx: typer.Context) -> None:
    """List built-in presets with what each is for."""
    from rich.table import Table

    table = Table("preset", "description", box=None)
    for name in presets.builtin_names():
        table.add_row(name, presets.description(name))
    console(ctx).print(table)


@app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Preset name or path.")]) -> None:
    """Print a preset's TOML as shipped."""
    text, _ = presets.preset_text(name)
    typer.echo(text, nl=False)
