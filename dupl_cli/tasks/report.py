"""What evaluate and pseudo-label both hand back: the protocol table (how the numbers were made) and the
HTML report (protocol, metrics, training curves, the sample rows worst first)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dupl_cli.evaluation.metrics import SegMetrics
from dupl_cli.evaluation.visualize import HtmlReport, confusion_png
from dupl_cli.predict.loop import LoadedModel, Runtime
from dupl_cli.predict.sinks import ReportSamples

Panels = list[tuple[str, np.ndarray | Image.Image]]


def protocol_table(
    loaded: LoadedModel,
    split: str,
    images: str,
    source: str,
    student: str,
    details: dict[str, Any],
    runtime: Runtime,
) -> dict[str, Any]:
    """The protocol rows in the order printed and saved; ``details`` are the command's own rows."""
    return {
        "checkpoint": f"{loaded.path} ({loaded.how})",
        "selection": loaded.selection_record(split)["text"],
        "split": f"{split} ({images})",
        "source": source,
        "student": student,
        **details,
        "processes": runtime.num_processes,
    }


def write_report(
    path: Path,
    title: str,
    loaded: LoadedModel,
    protocol: dict[str, Any],
    metrics: SegMetrics | None,
    samples: ReportSamples,
    panels: Callable[[dict[str, Any]], Panels],
) -> None:
    """One self-contained page; ``panels(row)`` draws the pictures of one kept sample."""
    report = HtmlReport(title, loaded.classes, loaded.palette)
    report.add_protocol(protocol)
    if metrics is not None:
        report.add_metrics(metrics, confusion_png(np.asarray(metrics.matrix), metrics.class_names))
    report.add_curves(loaded.path.parent / "curves")
    report.add_heading(
        "Images, lowest image IoU first (click an image to enlarge)" if samples.ranked else "Images"
    )
    for row in samples.rows.values():
        iou = row.get("iou")
        report.add_sample(row["id"], panels(row), note=None if iou is None else f"image IoU {_percent(iou)}")
    report.write(path)


def _percent(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}"
