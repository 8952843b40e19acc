"""The ``dupl`` command: global options and the composition of one module per command.

Nothing here imports torch; commands import the engine inside their functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup, TyperOption

from dupl_cli import __version__
from dupl_cli.cli import (
    compare_cmd,
    config_cmd,
    data_cmd,
    evaluate_cmd,
    export_cmd,
    import_cmd,
    infer_cmd,
    plugins_cmd,
    presets_cmd,
    pseudo_label_cmd,
    runs_cmd,
    submit_cmd,
    train_cmd,
)
from dupl_cli.cli.common import ConfigOpt, GlobalOptions, PresetOpt, SetOpt
from dupl_cli.core.errors import UserError

OPTIONAL_VALUE = {"--resume": "latest"}
"""Options whose value may be left out (``--resume`` alone means the latest checkpoint)."""
ANYWHERE = ("-q", "--quiet", "-v", "--verbose")
"""Global flags also accepted after the command (``dupl train -q``), as --preset/--config/--set are."""


def fill_optional_values(args: list[str]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in OPTIONAL_VALUE and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUE[arg])
    return out


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move -q/-v given after the command in front of it (not after ``--``, not as an option's value)."""
    end = args.index("--") if "--" in args else len(args)
    moved = {
        i for i, a in enumerate(args[:end]) if a in ANYWHERE and (i == 0 or args[i - 1] not in TAKES_VALUE)
    }
    return [args[i] for i in sorted(moved)] + [a for i, a in enumerate(args) if i not in moved]


TAKES_VALUE = ("--set", "-s", "--preset", "-p", "--config", "-c", "--out", "-o")


def _flag_type(self, ctx):
    """Flags take no value: show no ``<bool>`` type beside them in --help (typer shows one)."""
    return None if self.is_flag else _typed(self, ctx)


_typed = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type


class DuplGroup(TyperGroup):
    """Turns a ``UserError`` raised anywhere below into one line on stderr and its exit code."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, fill_optional_values(hoist_global_flags(list(args))))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=DuplGroup,
    name="dupl",
    help="Train, evaluate and run DuPL weakly supervised semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dupl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail in logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options apply to every command and may also follow it; a command's own --preset/--config/--set
    win."""
    verbosity = -1 if quiet else (1 if verbose else 0)
    ctx.obj = GlobalOptions(
        preset=preset, config=Path(config) if config else None, sets=list(sets or []), verbosity=verbosity
    )
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s")
    # Accelerate reports every file it saves at INFO; keep that for --verbose.
    logging.getLogger("accelerate").setLevel(logging.DEBUG if verbose else logging.WARNING)


app.add_typer(presets_cmd.app, name="presets")
app.add_typer(config_cmd.app, name="config")
app.add_typer(plugins_cmd.app, name="plugins")
app.add_typer(data_cmd.app, name="data")
app.add_typer(import_cmd.app, name="import")
app.add_typer(runs_cmd.app, name="runs")
app.command("train")(train_cmd.train)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("infer")(infer_cmd.infer)
app.command("pseudo-label")(pseudo_label_cmd.pseudo_label)
app.command("export")(export_cmd.export)
app.command("submit", help=submit_cmd.SUBMIT_HELP)(submit_cmd.submit)
app.command("compare", help=compare_cmd.COMPARE_HELP)(compare_cmd.compare)


def main() -> None:
    app(prog_name="dupl")
