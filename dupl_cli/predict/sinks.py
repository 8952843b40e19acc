"""Sinks of the prediction loop: confusion matrices, palette PNGs, overlays, probabilities, report
samples; and the metrics files (metrics.json, confusion.csv, confusion.png) written from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dupl_cli.core.atomic import atomic_write, atomic_write_text
from dupl_cli.evaluation import visualize
from dupl_cli.evaluation.metrics import ConfusionMeter, SegMetrics, class_iou, confusion_matrix
from dupl_cli.evaluation.visualize import confusion_png, overlay, with_legend
from dupl_cli.predict.loop import Item, Sink

PROBS_DOWNSCALE = 4


def label_array(label) -> np.ndarray:
    """A label map as uint8 H×W on the host."""
    if torch.is_tensor(label):
        return label.byte().cpu().numpy()
    return np.asarray(label, dtype=np.uint8)


class ConfusionSink(Sink):
    """One confusion matrix per route against the item's ground truth, accumulated on ``device``."""

    def __init__(self, num_classes: int, device, routes: int = 1) -> None:
        self.meters = [ConfusionMeter(num_classes, device) for _ in range(routes)]

    def add(self, prediction: np.ndarray | torch.Tensor, mask: np.ndarray, route: int = 0) -> None:
        pred = prediction if torch.is_tensor(prediction) else torch.from_numpy(np.asarray(prediction))
        self.meters[route].update(pred, torch.from_numpy(mask.astype(np.int64)))

    def label(self, item: Item, route: int, label) -> None:
        self.add(label, item.mask, route)


class MaskSink(Sink):
    """``<out>/<name>.png`` palette PNG per label (255 = uncertain), written atomically."""

    def __init__(self, out: Path, palette) -> None:
        self.out, self.palette = Path(out), palette
        self.written: list[Path] = []

    def label(self, item: Item, route: int, label) -> None:
        path = self.out / f"{item.name}.png"
        self.written.append(visualize.save_mask(path, label_array(label), self.palette))


class OverlaySink(Sink):
    """``<out>/<name>_overlay.jpg``: the image blended with its mask, and a legend of the classes in it
    (named with ``classes``, background first, else "class k")."""

    def __init__(self, out: Path, palette, classes: list[str] | None = None) -> None:
        self.out, self.palette, self.classes = Path(out), palette, classes

    def label(self, item: Item, route: int, label) -> None:
        mask = label_array(label)
        blended = with_legend(overlay(item.image, mask, self.palette), mask, self.palette, self.classes)
        path = self.out / f"{item.name}_overlay.jpg"
        atomic_write(path, lambda tmp: blended.save(tmp, format="JPEG", quality=90))


class ProbsSink(Sink):
    """``<out>/<name>_probs.npz``: softmax at 1/4 of the image size, float16, with the class names."""

    def __init__(self, out: Path, classes: list[str]) -> None:
        self.out, self.classes = Path(out), classes

    def output(self, item: Item, route: int, logits: torch.Tensor) -> None:
        save_probs(self.out / f"{item.name}_probs.npz", logits, self.classes)


def save_probs(path: Path, logits: torch.Tensor, classes: list[str]) -> None:
    """Softmax probabilities at 1/4 of the image size, float16, with the class names (.npz, no pickle)."""
    import torch.nn.functional as F

    h, w = logits.shape[-2:]
    size = (max(1, h // PROBS_DOWNSCALE), max(1, w // PROBS_DOWNSCALE))
    p = F.interpolate(logits.softmax(0)[None], size=size, mode="bilinear", align_corners=False)[0]
    arr = p.to(torch.float16).cpu().numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, probs=arr, classes=np.asarray(classes, dtype=str), image_size=np.array([h, w])
            )

    atomic_write(path, write)


def image_iou(label: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean IoU of one image over the classes in its ground truth or prediction (``IGNORE_INDEX`` pixels of
    the ground truth left out; an uncertain prediction counts as a miss)."""
    prediction, truth = torch.from_numpy(np.asarray(label)), torch.from_numpy(np.asarray(gt))
    matrix = confusion_matrix(prediction, truth, num_classes)
    iou = class_iou(matrix)
    seen = ~iou.isnan()
    return float(iou[seen].mean()) if bool(seen.any()) else float("nan")


class ReportSamples(Sink):
    """The rows of an HTML report (id, image, labels, ground truth, the first route's label and, with
    ``keep_cams``, its CAM): with ground truth the ``limit`` images of lowest per-image IoU, worst
    first (``row["iou"]``); without, the first ``limit``."""

    def __init__(self, limit: int, keep_cams: bool = False, num_classes: int | None = None) -> None:
        self.limit, self.keep_cams, self.num_classes = limit, keep_cams, num_classes
        self._kept: dict[Any, dict[str, Any]] = {}
        self._pending: dict[Any, dict[str, Any]] = {}

    @property
    def ranked(self) -> bool:
        return self.num_classes is not None

    @property
    def rows(self) -> dict[Any, dict[str, Any]]:
        """Kept rows, worst IoU first when ranked."""
        if not self.ranked:
            return self._kept
        order = sorted(self._kept, key=lambda k: np.nan_to_num(self._kept[k].get("iou", np.nan), nan=2.0))
        return {k: self._kept[k] for k in order}

    def begin(self, item: Item) -> None:
        row = {"id": item.id, "image": item.image, "labels": item.labels, "gt": item.mask}
        if self.ranked and item.mask is not None:
            self._pending[item.key] = row  # kept or dropped once its IoU is known
        elif len(self._kept) < self.limit:
            self._kept[item.key] = row

    def output(self, item: Item, route: int, output: torch.Tensor) -> None:
        row = self._pending.get(item.key) or self._kept.get(item.key)
        if self.keep_cams and route == 0 and row is not None:
            row["cam"] = output.cpu().numpy()

    def label(self, item: Item, route: int, label) -> None:
        if route != 0:
            return
        if item.key in self._kept:
            self._kept[item.key]["label"] = label_array(label)
            return
        row = self._pending.pop(item.key, None)
        if row is None:
            return
        row["label"] = label_array(label)
        row["iou"] = image_iou(row["label"], row["gt"], self.num_classes)
        self._kept[item.key] = row
        if len(self._kept) > self.limit:  # drop the best one: the report shows the worst
            best = max(self._kept, key=lambda k: np.nan_to_num(self._kept[k]["iou"], nan=2.0))
            del self._kept[best]


def write_metrics(out: Path, metrics: SegMetrics, payload: dict) -> None:
    """metrics.json, confusion.csv (rows GT, columns prediction + uncertain), confusion.png."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2))
    header = "gt\\pred," + ",".join([*metrics.class_names, "uncertain"])
    lines = [header] + [
        ",".join([name, *map(str, row)])
        for name, row in zip(metrics.class_names, metrics.matrix, strict=True)
    ]
    atomic_write_text(out / "confusion.csv", "\n".join(lines) + "\n")
    img = confusion_png(np.asarray(metrics.matrix), metrics.class_names)
    atomic_write(out / "confusion.png", lambda tmp: img.save(tmp, format="PNG"))
