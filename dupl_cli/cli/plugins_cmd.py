"""``dupl plugins list``: installed backbone and dataset plugins and whether they load."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dupl_cli.cli.common import console

app = typer.Typer(help="Backbone and dataset plugins.", no_args_is_help=True)


@app.command("list")
def list_plugins(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Name, kind, distribution, version and load status of every plugin."""
    from dataclasses import asdict

    from rich.table import Table

    from dupl_cli.plugins import GROUPS
    from dupl_cli.plugins import list_plugins as rows

    plugins = rows()
    if as_json:
        typer.echo(json.dumps([asdict(p) for p in plugins], indent=2))
        return
    table = Table("name", "kind", "distribution", "version", "status", box=None)
    for p in plugins:
        status = "[green]ok[/]" if p.status == "ok" else f"[red]failed[/]: {p.error}"
        table.add_row(p.name, GROUPS[p.group], p.dist, p.version, status)
    console(ctx).print(table)
