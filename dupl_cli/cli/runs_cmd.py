"""``dupl runs``: the run history under train.runs_root (list), and one run in detail (show)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import ConfigOpt, PresetOpt, SetOpt, console, resolve_settings
from dupl_cli.core.errors import UserError
from dupl_cli.runs.run_index import list_runs, settings_changed_from_preset, summary, validation_history

app = typer.Typer(help="Find and compare training runs.", no_args_is_help=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _percent(value) -> str:
    return f"{value:.1f}" if type(value) in (int, float) else "–"


def _best(row: dict) -> str:
    best = row["best"]
    if not best or best.get("seg_miou") is None:
        return "–"
    return f"{best['seg_miou']:.1f} (student {best['student']}, step {best['step']})"


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Every run under train.runs_root, oldest first: preset, dataset, step, status, best validation seg mIoU,
    size."""
    from rich.markup import escape
    from rich.table import Column, Table

    root = Path(resolve_settings(ctx, preset, config, sets).settings.train.runs_root)
    rows = [summary(p) for p in list_runs(root)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    con = console(ctx)
    if not rows:
        con.print(f"no runs under {root}/")
        return
    table = Table(
        "preset", "dataset", "step", "status", "best val seg mIoU", "size", title=f"runs in {root}/"
    )
    table.columns.insert(0, Column("run", no_wrap=True))
    for r in rows:
        step = "–" if r["step"] is None else f"{r['step']}/{r['max_iters'] or '?'}"
        table.add_row(
            escape(r["name"]),
            escape(r["preset"] or "–"),
            escape(r["dataset"] or "–"),
            step,
            r["status"],
            _best(r),
            _size(r["size_bytes"]),
        )
    con.print(table)
    for r in rows:
        if r["problem"]:
            con.print(f"{r['name']}: {r['status']}: {r['problem']}", markup=False, soft_wrap=True)
    latest = root / "latest"
    if latest.is_symlink():
        con.print(f"{latest} -> {latest.resolve().name}")


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    run: Annotated[
        Path, typer.Argument(help="Run directory (or a name under train.runs_root).", show_default=False)
    ],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """One run: status, the settings that differ from its preset, and validation mIoU over time."""
    from rich.markup import escape
    from rich.table import Table

    if not run.is_dir():
        named = Path(resolve_settings(ctx, preset, config, sets).settings.train.runs_root) / run
        if not named.is_dir():
            raise UserError(f"{run}: not a run directory (nor a run under train.runs_root)")
        run = named
    run = run.resolve()  # runs/latest names the run it points at
    if not (run / "config.toml").is_file():
        raise UserError(f"{run}: not a run directory (no config.toml)")
    row = summary(run)
    con = console(ctx)
    step = "–" if row["step"] is None else f"{row['step']}/{row['max_iters'] or '?'}"
    con.print(
        f"[bold]{escape(row['name'])}[/bold] ({escape(str(run))}): {row['status']}, step {step}, "
        f"preset {escape(row['preset'] or '– (defaults)')}, data {escape(row['dataset'] or '–')}, "
        f"{_size(row['size_bytes'])}"
    )
    if row["problem"]:
        con.print(f"{row['status']}: {row['problem']}", markup=False, soft_wrap=True)
    con.print(f"best validation seg mIoU: {_best(row)}")
    changed = settings_changed_from_preset(run)
    table = Table(
        "setting",
        "preset",
        "this run",
        title=f"settings that differ from {escape(row['preset'] or 'the defaults')}",
    )
    for key, before, value in changed:
        table.add_row(key, escape(json.dumps(before)), escape(json.dumps(value)))
    con.print(table if changed else "settings: as the preset")
    history = validation_history(run)
    if not history:
        con.print("validation: none recorded")
        return
    keys = list(history[0]["validation"])
    metrics = Table("step", *keys, "best student", title="validation mIoU (%) over time")
    for record in history:
        values = record["validation"]
        metrics.add_row(
            escape(str(record.get("step", "–"))),
            *(_percent(values.get(k)) for k in keys),
            escape(str(record.get("best_student", "–"))),
        )
    con.print(metrics)
