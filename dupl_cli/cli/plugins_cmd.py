"""``dupl plugins list``: installed backbone and dataset plugins and whether they load."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from dupl_cli.cli.common import console
from dupl_cli.core.errors import UserError
from dupl_cli.plugins import GROUPS, discover
from dupl_cli.plugins import list_plugins as rows

app = typer.Typer(help="Backbone and dataset plugins.", no_args_is_help=True)


class Kind(str, Enum):
    backbone = "backbone"
    dataset = "dataset"


STATUS_STYLE = {"ok": "green", "not loaded": "dim", "shadowed": "yellow"}


@app.command("list")
def list_plugins(
    ctx: typer.Context,
    patterns: Annotated[
        list[str] | None,
        typer.Argument(
            help="Shell wildcards over plugin names, e.g. 'conv*' (quote them).", show_default=False
        ),
    ] = None,
    kind: Annotated[Kind | None, typer.Option("--kind", help="Only backbones or only datasets.")] = None,
    no_load: Annotated[
        bool, typer.Option("--no-load", help="Do not import plugins (status 'not loaded').")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Name, kind, distribution, version and load status of every plugin, and any broken distribution.

    A plugin that fails to import (or exits while importing) is listed as failed with the reason;
    one hidden by a plugin of the same name is listed as shadowed.
    """
    import warnings
    from dataclasses import asdict

    from rich.markup import escape
    from rich.table import Table

    patterns = list(patterns or [])
    groups = [kind.value] if kind else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clashes are rows of their own here
        plugins = rows(patterns, try_load=not no_load, groups=groups)
        if patterns and not any(p.name for p in plugins):
            names = sorted({n for g in groups or GROUPS for n in discover(g)})
            raise UserError(
                f"no plugin name matches {' '.join(map(repr, patterns))} "
                f"(names: {', '.join(names) or 'none'})",
                exit_code=1,
            )
    if as_json:
        typer.echo(json.dumps([asdict(p) for p in plugins], indent=2))
        return
    table = Table("name", "kind", "distribution", "version", "status", box=None)
    problems = []
    for p in plugins:
        table.add_row(
            escape(p.name or "-"),
            GROUPS.get(p.group, "distribution"),
            escape(p.dist),
            p.version,
            f"[{STATUS_STYLE.get(p.status, 'red')}]{p.status}[/]",
        )
        if p.error:  # below the table, whole, so a long reason or path is not wrapped into a column
            problems.append(f"{escape(p.name or p.dist)} ({p.status}): {escape(p.error)}")
    out = console(ctx)
    out.print(table)
    for line in problems:
        out.print(line, soft_wrap=True)
