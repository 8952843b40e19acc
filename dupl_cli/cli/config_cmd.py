"""``dupl config show``: the resolved settings, optionally with the source and description of every value;
``dupl config reference``: every setting of the schema, as docs/settings.md."""

from __future__ import annotations

import json
import textwrap
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import ConfigOpt, PresetOpt, SetOpt, console, resolve_settings
from dupl_cli.config.reference import settings_reference
from dupl_cli.config.sources import explain as explain_rows
from dupl_cli.config.toml_writer import dumps
from dupl_cli.core.atomic import atomic_write_text

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
    explain: Annotated[
        bool, typer.Option("--explain", help="Name the source and give the description of every value.")
    ] = False,
) -> None:
    """Show the settings after defaults, preset, --config, environment and --set are merged."""
    from rich.markup import escape

    resolved = resolve_settings(ctx, preset, config, sets)
    data = resolved.settings.model_dump(mode="json")
    if fmt is Format.json:
        if explain:
            data = {
                key: {"value": value, "source": source, "description": text}
                for key, value, source, text in explain_rows(resolved)
            }
        typer.echo(json.dumps(data, indent=2))
        return
    if not explain:
        typer.echo(dumps(data), nl=False)
        return
    out = console(ctx)
    for key, value, source, text in explain_rows(resolved):
        style = "" if source == "default" else "bold"
        line = f"{escape(key)} = {escape(json.dumps(value))}  [dim]({escape(source)})[/dim]"
        out.print(f"[{style}]{line}[/{style}]" if style else line, soft_wrap=True)  # one line per setting
        if text:
            wrapped = textwrap.fill(text, max(out.width, 40), initial_indent="    ", subsequent_indent="    ")
            out.print(escape(wrapped), style="dim", soft_wrap=True)
    for note in resolved.ignored:
        out.print(f"ignored: {escape(note)}", style="dim")


@app.command("reference")
def reference(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write the Markdown to this file (docs/settings.md) instead of printing it."
        ),
    ] = None,
) -> None:
    """The settings reference: every key with its type, default and description, from the schema."""
    text = settings_reference()
    if out is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(out, text)
    console(ctx).print(f"wrote {out}")
