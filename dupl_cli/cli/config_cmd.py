"""``dupl config show``: the resolved settings, optionally with the source of every value."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from dupl_cli.cli.common import ConfigOpt, PresetOpt, SetOpt, console, resolve_settings

app = typer.Typer(help="Inspect the resolved settings.", no_args_is_help=True)


class Format(str, Enum):
    toml = "toml"
    json = "json"


@app.command("show")
def show(
    ctx: typer.Context,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.toml,
    explain: Annotated[bool, typer.Option("--explain", help="Name the source of every value.")] = False,
) -> None:
    """Show the settings after defaults, preset, --config, environment and --set are merged."""
    from dupl_cli.config.sources import explain as explain_rows
    from dupl_cli.config.toml_writer import dumps

    resolved = resolve_settings(ctx, preset, config, sets)
    data = resolved.settings.model_dump(mode="json")
    if fmt is Format.json:
        if explain:
            data = {key: {"value": value, "source": source} for key, value, source in explain_rows(resolved)}
        typer.echo(json.dumps(data, indent=2))
        return
    if not explain:
        typer.echo(dumps(data), nl=False)
        return
    from rich.table import Table

    table = Table("setting", "value", "source", box=None)
    for key, value, source in explain_rows(resolved):
        table.add_row(key, json.dumps(value), source, style=None if source == "default" else "bold")
    console(ctx).print(table)
