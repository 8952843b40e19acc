"""``dupl compare``: a paper-style table of runs (mean ± std over seeds), also as CSV / JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import console
from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.runs.compare import SEED, RunSummary, csv_rows, ordered, to_json
from dupl_cli.runs.compare import compare as run_compare

COMPARE_HELP = (
    "One row per run: CAM, aux-CAM and segmentation mIoU, each evaluation's mIoU and over-activation, and "
    "the settings that differ between the runs. Runs whose settings differ only in train.seed form a group "
    "with a mean ± std row (sample std, n - 1).\n\n"
    "Where the numbers come from (nothing is recomputed): CAM, aux-CAM and seg are the last validation "
    "record of the run's metrics.jsonl (training-time protocol), for the student its card names "
    "(final.json, else best.json; without a card, the record's best_student). '<tag> mIoU' and "
    "'<tag> over-act.' come from each <run>/eval/<tag>/metrics.json that `dupl evaluate` wrote (tag = "
    "split-source[-ms][-crf]); over-activation is the mean over the foreground classes present in the "
    "ground truth of FP / (TP + FP). All in %. Settings come from config.toml (else the card); "
    "train.run_name, runs_root, log_every, image_every, tracker, data.num_workers, crf.workers and "
    "eval.checkpoint never "
    "count as differences. A run without any number is listed with a note, never dropped."
)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _setting(value) -> str:
    return "–" if value is None else str(value)


def table(comparison):
    from rich.table import Table

    keys = comparison.differing
    result = Table(title="dupl compare (numbers in %)")
    for col in ["run", *keys, "step", "student", *comparison.columns]:
        result.add_column(col, justify="left" if col == "run" or col in keys else "right")
    names = [r.path.name for r in comparison.runs]
    short = {id(r): r.path.name if names.count(r.path.name) == 1 else r.name for r in comparison.runs}
    for item in ordered(comparison):
        if isinstance(item, RunSummary):
            result.add_row(
                short[id(item)],
                *(_setting(item.settings.get(k)) for k in keys),
                _setting(item.step),
                _setting(item.student),
                *(_fmt(item.values.get(c)) for c in comparison.columns),
            )
            continue
        n, first = len(item.runs), item.runs[0].settings
        cells = []
        for col in comparison.columns:
            if col not in item.mean:
                cells.append("–")
                continue
            std = item.std[col]
            text = _fmt(item.mean[col]) + (f" ± {std:.1f}" if std is not None else "")
            cells.append(text + (f" ({item.count[col]} of {n})" if item.count[col] < n else ""))
        settings = [
            ", ".join(str(r.seed) for r in item.runs) if k == SEED else _setting(first.get(k)) for k in keys
        ]
        result.add_row(f"[bold]mean ± std ({n} runs)[/bold]", *settings, "", "", *cells, end_section=True)
    return result


def _write(target: Path, text: str) -> None:
    if str(target) == "-":
        typer.echo(text, nl=False)
        return

    atomic_write_text(target, text)


def _csv_text(comparison) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(
        [["" if v is None else v for v in row] for row in csv_rows(comparison)]
    )
    return buffer.getvalue()


def compare(
    ctx: typer.Context,
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories (training runs or imports).", show_default=False)
    ],
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Also write the rows as CSV here ('-': stdout, no table).")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write runs and groups as JSON here ('-': stdout, no table)."),
    ] = None,
    eval_tags: Annotated[
        list[str] | None,
        typer.Option(
            "--eval", help="Only these evaluations (e.g. val-seg-ms-crf); repeatable. Default: all found."
        ),
    ] = None,
) -> None:
    import json

    comparison = run_compare(runs, eval_tags)
    to_stdout = "-" in (str(csv_out), str(json_out))
    out = console(None, stderr=True) if to_stdout else console(ctx)  # stdout then holds only CSV / JSON
    if not to_stdout:
        if not out.is_terminal:
            out.width = 240  # a file or pipe gets the whole table, not one squeezed to 80 columns
        out.print(table(comparison))
    for run in comparison.runs:
        for note in run.notes:
            out.print(f"note: {run.name}: {note}", markup=False, soft_wrap=True)
    if csv_out is not None:
        _write(csv_out, _csv_text(comparison))
    if json_out is not None:
        _write(json_out, json.dumps(to_json(comparison), indent=2) + "\n")
