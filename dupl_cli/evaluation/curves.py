"""Training curves as PNG files in ``<run>/curves/``, redrawn with matplotlib (the ``plots`` extra)
from ``metrics.jsonl`` at each validation; TensorBoard (train.tracker) stays optional.

One figure per concern: the loss terms, the learning rate (log scale), the validation mIoU of each
student (every validation a marked point), τ_h, the noise share and the label quality
(``quality/*``: the consistency mask, and with ``train.label_quality`` the labels' accuracy) when
they were logged. Every chart
has labelled axes, a grid, a legend, and the phase boundaries of the run's ``config.toml``
(``method.t_seg``, ``method.t_anf``) as vertical lines where the run has reached them.
``curve_figures`` builds the figures (inspectable); ``write_curves`` saves them. Without matplotlib
the curves are skipped with one warning: training never fails for a chart.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tomllib

from dupl_cli.core.atomic import atomic_write
from dupl_cli.evaluation.plots import figure_png, matplotlib_missing, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Series = dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class Chart:
    title: str
    ylabel: str
    log: bool = False  # log-scale y (non-positive values are left out)
    marked: bool = False  # a marker on every point (few points: validations)


CHARTS = {  # file stem: chart, in the order they are drawn
    "loss": Chart("loss terms (sum over both students)", "loss"),
    "lr": Chart("learning rate (backbone)", "learning rate (log scale)", log=True),
    "val_miou": Chart("validation mIoU per student", "mIoU (%)", marked=True),
    "tau_h": Chart("τ_h (dynamic foreground threshold)", "τ_h"),
    "noise_share": Chart("noise share (pixels filtered by ANF)", "filtered pixels (%)"),
    "quality": Chart("label quality on the training views (docs/method.md §8.1)", "pixels (%)"),
}
PHASES = {  # method setting: (what starts there (docs/method.md), its line style)
    "t_seg": ("segmentation loss, PAR labels", "--"),
    "t_anf": ("noise filter, consistency", "-."),
}
_KIND_STYLE = {"seg": "-", "cam": "--", "aux_cam": ":"}  # validation series: line style per kind
_warned = False


def _records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            (val if isinstance(record.get("validation"), dict) else train).append(record)
    return train, val


def _series(records: list[dict], keys: list[str], scale: float = 1.0, field: str | None = None) -> Series:
    out = {}
    for key in keys:
        points = [
            (r["step"], scale * float(v))
            for r in records
            if isinstance(v := (r[field] if field else r).get(key), int | float) and math.isfinite(v)
        ]
        if points:
            out[key] = points
    return out


def phase_boundaries(run_dir: Path) -> dict[str, int]:
    """``{"t_seg": n, "t_anf": m}`` from the run's ``config.toml`` (those it records)."""
    path = Path(run_dir) / "config.toml"
    try:
        method = tomllib.loads(path.read_text(encoding="utf-8")).get("method", {})
    except (OSError, ValueError):
        return {}
    return {k: int(v) for k in PHASES if isinstance(v := method.get(k), int | float)}


def chart_series(run_dir: Path) -> dict[str, Series]:
    """Every chart's lines (name -> [(step, value)]), for the charts that have data."""
    train, val = _records(run_dir)
    losses = sorted({k for r in train for k in r if k.startswith("loss/") and not k.endswith(("_1", "_2"))})
    scores = sorted({k for r in val for k in r["validation"]})
    quality = sorted({k for r in train for k in r if k.startswith("quality/")})
    series = {
        "loss": {k.removeprefix("loss/"): v for k, v in _series(train, losses).items()},
        "lr": _series(train, ["lr"]),
        "val_miou": _series(val, scores, field="validation"),
        "tau_h": _series(train, ["tau_h"]),
        "noise_share": _series(train, ["noise_share"], scale=100.0),
        "quality": {k.removeprefix("quality/"): v for k, v in _series(train, quality, scale=100.0).items()},
    }
    for stem, chart in CHARTS.items():
        if chart.log:
            series[stem] = {
                k: kept for k, pts in series[stem].items() if (kept := [p for p in pts if p[1] > 0])
            }
    return {stem: lines for stem, lines in series.items() if lines}


def _style(stem: str, name: str, index: int) -> dict:
    """Validation lines: one colour per student, one line style per kind (seg, CAM, aux CAM)."""
    if stem != "val_miou":
        return {"color": f"C{index % 10}"}
    kind, _, student = name.rpartition("_s")
    colour = f"C{int(student) - 1}" if student.isdigit() else f"C{index % 10}"
    return {"color": colour, "linestyle": _KIND_STYLE.get(kind, "-.")}


def curve_figure(stem: str, lines: Series, phases: dict[str, int]) -> Figure:
    """One chart: ``lines`` against the step, with the ``phases`` the lines reach as vertical lines."""
    from matplotlib.ticker import MaxNLocator

    chart = CHARTS[stem]
    figure = new_figure(8.0, 4.2)
    ax = figure.add_subplot()
    for index, (name, points) in enumerate(lines.items()):
        xs, ys = zip(*points, strict=True)
        marker = "o" if chart.marked or len(points) == 1 else None
        ax.plot(xs, ys, label=name, marker=marker, markersize=4, linewidth=1.5, **_style(stem, name, index))
    last = max(x for points in lines.values() for x, _ in points)
    for key, step in phases.items():
        if step <= last:
            what, style = PHASES[key]
            ax.axvline(step, color="0.3", linestyle=style, linewidth=1.2, label=f"{key} = {step} ({what})")
    if chart.log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(chart.title)
    ax.set_xlabel("step")
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return figure


def curve_figures(run_dir: Path) -> dict[str, Figure]:
    """The run's charts (file stem -> figure), those with data, in ``CHARTS`` order."""
    phases = phase_boundaries(run_dir)
    return {stem: curve_figure(stem, lines, phases) for stem, lines in chart_series(run_dir).items()}


def write_curves(run_dir: Path) -> list[Path]:
    """Redraw every curve with data into ``<run>/curves/<name>.png``; returns the files written.

    Without matplotlib: nothing is drawn, and one warning (per process) names the install."""
    global _warned
    missing = matplotlib_missing("training curves")
    if missing:
        if not _warned:
            _warned = True
            warnings.warn(f"skipped: {missing}", UserWarning, stacklevel=2)
        return []
    out = Path(run_dir) / "curves"
    written = []
    for stem, figure in curve_figures(run_dir).items():
        data = figure_png(figure)
        path = out / f"{stem}.png"
        atomic_write(path, lambda tmp, data=data: tmp.write_bytes(data))
        written.append(path)
    return written
