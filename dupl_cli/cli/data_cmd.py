"""``dupl data``: generate the demo data, verify a dataset, write image-level labels, build COCO masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import ConfigOpt, PresetOpt, SetOpt, console, resolve_settings
from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.core.errors import DataError, UserError
from dupl_cli.data.coco_masks import build_masks
from dupl_cli.data.demo import write_demo
from dupl_cli.data.images import labels_from_mask
from dupl_cli.data.verify import verify
from dupl_cli.plugins import DATASETS, load

app = typer.Typer(help="Prepare and check datasets.", no_args_is_help=True)

SplitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--split", help="Split(s) to use; default: data.train_split and data.val_split.", show_default=False
    ),
]


def _adapters(settings, splits: list[str] | None):
    factory = load(DATASETS, settings.data.adapter)
    names = list(dict.fromkeys(splits or [settings.data.train_split, settings.data.val_split]))
    return [(name, factory(settings.data, name)) for name in names]


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (must not exist or be empty).")],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.", min=32)] = 128,
    n_train: Annotated[int, typer.Option("--n-train", help="Training images.", min=1)] = 300,
    n_val: Annotated[int, typer.Option("--n-val", help="Validation images.", min=1)] = 60,
) -> None:
    """Write the built-in demo dataset in the folder layout."""
    import time

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; choose another --out or delete it")
    start = time.perf_counter()
    write_demo(out, seed=seed, size=size, n_train=n_train, n_val=n_val)
    typer.echo(
        f"wrote {n_train} train + {n_val} val images ({size}px, seed {seed}) to {out} "
        f"in {time.perf_counter() - start:.1f}s"
    )


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    split: SplitOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Decode images at full resolution (slower).")] = False,
) -> None:
    """Check every listed image, mask and label; exit 1 on any error."""
    settings = resolve_settings(ctx, preset, config, sets).settings
    reports = [
        verify(adapter, full=full, crop_size=settings.data.crop_size)
        for _, adapter in _adapters(settings, split)
    ]
    ok = all(r.ok for r in reports)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": ok,
                    "adapter": settings.data.adapter,
                    "root": str(settings.data.root),
                    "splits": [r.to_dict() for r in reports],
                },
                indent=2,
            )
        )
    else:
        _print_reports(console(ctx), settings, reports)
    if not ok:
        raise typer.Exit(1)


def _print_reports(con, settings, reports) -> None:
    from rich.table import Table

    for r in reports:
        status = "[green]ok[/green]" if r.ok else f"[red]{len(r.problems)} problem(s)[/red]"
        con.print(
            f"[bold]{settings.data.adapter}[/bold] {settings.data.root} split [bold]{r.split}[/bold]: "
            f"{r.count} images, masks: {'yes' if r.has_masks else 'no'} — {status}"
        )
        if r.sizes:
            h, w = r.sizes["height"], r.sizes["width"]
            con.print(
                f"  size (h×w) min {h['min']}×{w['min']}, median {h['median']:g}×{w['median']:g}, "
                f"max {h['max']}×{w['max']}"
            )
        if r.class_counts:
            table = Table("class", "images", title=f"images per class ({r.split})", title_justify="left")
            for name, n in r.class_counts.items():
                table.add_row(name, str(n))
            con.print(table)
        for note in r.notes:
            con.print(f"  note: {note}")
        for p in r.problems[:200]:
            con.print(f"  [red]error[/red] {p.message}", markup=True, highlight=False)
        if len(r.problems) > 200:
            con.print(f"  ... and {len(r.problems) - 200} more (use --json for all)")


@app.command("labels")
def labels_cmd(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="CSV file to write: id,class names separated by spaces.")
    ],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    split: SplitOpt = None,
) -> None:
    """Write image-level labels as CSV: from each image's mask, else (no mask) from the adapter's other
    source (VOC annotation XML, the labels file); exit 1 if any image fails."""
    from concurrent.futures import ThreadPoolExecutor

    settings = resolve_settings(ctx, preset, config, sets).settings
    inputs = [
        settings.data.labels_file,
        Path(settings.data.root) / "labels.csv",
        Path(settings.data.root) / "labels.json",
    ]
    if any(p is not None and Path(p).expanduser().resolve() == out.expanduser().resolve() for p in inputs):
        raise UserError(f"{out}: is a labels file the dataset reads; write the labels elsewhere")
    rows: dict[str, str] = {}
    errors: list[str] = []
    for _, adapter in _adapters(settings, split):

        def one(i, adapter=adapter):
            sample_id = adapter.sample_id(i)
            mask = adapter.load_mask(sample_id)
            if mask is not None:  # the mask wins over a labels file: this command derives labels
                return sample_id, labels_from_mask(mask, len(adapter.classes))
            return sample_id, adapter.labels_of(sample_id, None)

        def safe(i, one=one):
            try:
                return one(i), None
            except DataError as exc:
                return None, str(exc)

        with ThreadPoolExecutor(8) as pool:
            for res, err in pool.map(safe, range(len(adapter))):
                if err:
                    errors.append(err)
                else:
                    sample_id, vec = res
                    rows[sample_id] = " ".join(adapter.classes[k] for k in vec.nonzero()[0])

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "id,labels\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    typer.echo(f"wrote labels of {len(rows)} images to {out}")
    for e in errors:
        typer.echo(f"error: {e}", err=True)
    if errors:
        raise typer.Exit(1)


@app.command("coco-masks")
def coco_masks(
    instances: Annotated[
        Path,
        typer.Option("--instances", help="COCO instances JSON, e.g. annotations/instances_train2014.json."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Mask folder, e.g. <root>/SegmentationClass/train2014.")
    ],
    list_out: Annotated[
        Path | None,
        typer.Option("--list", help="Also write the ids with objects here, e.g. <root>/ImageSets/train.txt."),
    ] = None,
) -> None:
    """Build VOC-style PNG masks (0 bg, 1..80, 255 crowd) from COCO instance annotations (needs the `coco`
    extra)."""
    written, empty = build_masks(instances, out, list_file=list_out)
    typer.echo(f"wrote {written} masks to {out} ({empty} without any object)")
