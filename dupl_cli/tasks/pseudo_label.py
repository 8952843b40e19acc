"""``dupl pseudo-label``: one palette PNG per image (255 = uncertain) for second-stage training.

Sources: ``cam`` (multi-scale CAM with the image-level labels; thresholds τ_h/τ_l of §4.2, or the
two-pass CRF of §11) or ``seg`` (the segmentation head through TTA, optionally CRF).
Resumable: a finished PNG is skipped; writes go to a temporary file renamed into place, so a file
that exists is complete. ``--evaluate`` scores all files (new and resumed) against ground truth.
``--confidence`` also writes ``confidence/<id>.png``, the confidence of each pixel's label
(``method.stage2.label_confidence``) for stage 2's ``method.stage2_weights = "confidence"``. When all
images are labelled the folder gets ``index.csv`` and ``pseudo_labels.json``, the record stage-2
training checks the folder against (``data.pseudo_labels``); resuming into a folder made from another
checkpoint, dataset or recipe is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dupl_cli import __version__
from dupl_cli.config.method_params import cam_config
from dupl_cli.core.atomic import atomic_write
from dupl_cli.core.errors import UserError
from dupl_cli.data.base import shard
from dupl_cli.data.pseudo_labels import (
    CONFIDENCE_DIR,
    META_FILE,
    dataset_record,
    ids_digest,
    read_meta,
    write_index,
    write_meta,
)
from dupl_cli.evaluation.class_match import aligned
from dupl_cli.evaluation.metrics import SegMetrics, metrics_from_confusion
from dupl_cli.evaluation.plots import require_matplotlib
from dupl_cli.evaluation.visualize import load_mask, sample_panels
from dupl_cli.method.stage2 import label_confidence
from dupl_cli.models.segmenter import is_segmenter
from dupl_cli.predict.loop import (
    Item,
    LoadedModel,
    PredictOptions,
    ProgressBar,
    Runtime,
    Sink,
    dataset_items,
    predict,
)
from dupl_cli.predict.routes import CamRoute, SegRoute
from dupl_cli.predict.sinks import ConfusionSink, MaskSink, ReportSamples, write_metrics
from dupl_cli.predict.tta import TTAConfig
from dupl_cli.tasks.report import Panels, protocol_table, write_report

PNG_END = b"IEND\xaeB`\x82"


@dataclass
class PseudoLabelRequest:
    out: Path
    split: str = "train_aug"
    source: str = "cam"  # cam | seg
    crf: bool = False
    multiscale: bool = False  # seg source: TTA scales and flip
    student: str = "best"
    evaluate: bool = False
    report: Path | None = None
    max_images: int = 0
    report_samples: int = 8
    confidence: bool = False  # also confidence/<id>.png


RECIPE = (
    "dataset",
    "split",
    "classes",
    "source",
    "crf",
    "multiscale",
    "checkpoint",
    "checkpoint_sha256",
    "student",
)
"""What a folder's labels were made with: resuming into it with any of these changed is refused."""


@dataclass
class PseudoLabelResult:
    protocol: dict
    out: Path
    written: int  # by this process
    skipped: int  # already complete (resumed)
    metrics: SegMetrics | None  # with --evaluate on a split with masks


def is_complete(path: Path) -> bool:
    """A PNG that ends with its IEND chunk (atomic writes make this the normal case)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            fh.seek(-8, 2)
            return fh.read(8) == PNG_END
    except OSError:
        return False


class ConfidenceSink(Sink):
    """``<out>/confidence/<name>.png``: 8-bit grey, 255 x the confidence of the label written."""

    def __init__(self, out: Path, kind: str) -> None:
        self.out, self.kind = Path(out) / CONFIDENCE_DIR, kind
        self.out.mkdir(parents=True, exist_ok=True)
        self._scores: dict[Any, torch.Tensor] = {}

    def output(self, item: Item, route: int, output: torch.Tensor) -> None:
        if route == 0:
            self._scores[item.key] = output

    def label(self, item: Item, route: int, label) -> None:
        if route != 0:
            return
        label = label if torch.is_tensor(label) else torch.from_numpy(np.asarray(label))
        scores = self._scores.pop(item.key)
        conf = label_confidence(scores, label, self.kind, torch.from_numpy(np.asarray(item.labels)))
        grey = Image.fromarray((conf * 255).round().byte().cpu().numpy(), mode="L")
        atomic_write(self.out / f"{item.name}.png", lambda tmp: grey.save(tmp, format="PNG"))


def _route(loaded: LoadedModel, indices, settings, req: PseudoLabelRequest) -> CamRoute | SegRoute:
    """CAMs labelled three-way at crf.cam's tau_h / tau_l, else the segmentation head through TTA."""
    if req.source == "cam":
        if is_segmenter(loaded.model):
            raise UserError(
                f"{loaded.path}: a stage-2 segmenter has no CAMs; use --source seg (or a stage-1 run)"
            )
        tau = settings.crf.cam
        return CamRoute.of(loaded.model, indices, settings, tau.tau_high, tau.tau_low)
    tta = TTAConfig.from_settings(settings.eval, multiscale=req.multiscale)
    return SegRoute.of(loaded.model, indices, settings, tta)


def run_pseudo_label(
    loaded: LoadedModel,
    adapter,
    settings,
    runtime: Runtime,
    req: PseudoLabelRequest,
    *,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> PseudoLabelResult:

    adapter, remap_note = aligned(
        adapter, loaded, f"the {settings.data.adapter} dataset at {settings.data.root}"
    )
    own_part = shard(adapter, runtime.process_index, runtime.num_processes, req.max_images)
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    pick = loaded.pick(req.student)
    made_with = recipe(loaded, settings, req, pick.indices)
    check_recipe(out, made_with)
    scoring = req.evaluate and adapter.has_masks
    if scoring:  # before any image is labelled
        require_matplotlib("pseudo-label --evaluate (its confusion.png)")
    if req.evaluate and not adapter.has_masks:
        log(f"--evaluate: split {req.split!r} has no ground-truth masks; nothing to score")
    targets = [out / f"{sample_id}.png" for sample_id in own_part.ids]
    todo = [i for i, t in enumerate(targets) if not _complete(t, req.confidence)]
    skipped = len(targets) - len(todo)
    if skipped and runtime.is_main:
        log(f"resuming: {skipped} of {len(targets)} pseudo-labels already complete in {out}")
    confusion = ConfusionSink(len(loaded.classes), runtime.device)
    want_report = req.report is not None and runtime.is_main
    ranked = len(loaded.classes) if adapter.has_masks else None  # worst first when there is ground truth
    samples = ReportSamples(req.report_samples, keep_cams=req.source == "cam", num_classes=ranked)
    sinks = [MaskSink(out, loaded.palette), *([confusion] if scoring else [])]
    sinks += [samples] if want_report else []
    sinks += [ConfidenceSink(out, req.source)] if req.confidence else []
    route = _route(loaded, pick.indices, settings, req)
    options = PredictOptions.from_settings(settings, req.crf)
    with ProgressBar(f"pseudo-label {req.split}", len(targets), show_progress and runtime.is_main) as bar:
        if scoring:  # finished files are scored from disk, without decoding their images
            for i in sorted(set(range(len(targets))) - set(todo)):
                confusion.add(load_mask(targets[i]), own_part[i].mask)
        bar.advance(skipped)
        predict(dataset_items(own_part, todo), [route], sinks, runtime, options, bar)

    protocol = _protocol(loaded, settings, runtime, req, pick.text, len(todo), skipped, len(adapter))
    if remap_note:
        protocol["classes"] = remap_note
    metrics = metrics_from_confusion(confusion.meters[0].reduced(), loaded.classes) if scoring else None
    if metrics is not None and runtime.is_main:
        payload = {"protocol": protocol, "selection": loaded.selection_record(req.split), **metrics.to_json()}
        write_metrics(out.parent / f"{out.name}_metrics", metrics, payload)
    result = PseudoLabelResult(protocol, out, len(todo), skipped, metrics)
    if want_report:
        what = "CAM pseudo-labels" if req.source == "cam" else "segmentation-head pseudo-labels"
        title = f"dupl pseudo-label: {what} on {req.split}"
        write_report(req.report, title, loaded, protocol, metrics, samples, _panels(loaded))
    runtime.barrier()  # every process's files are written: the folder's record may describe them all
    if runtime.is_main:
        labelled = shard(adapter, 0, 1, req.max_images).ids
        _write_record(out, made_with, labelled, req, loaded, metrics)
    return result


def _complete(label: Path, confidence: bool) -> bool:
    if not is_complete(label):
        return False
    return not confidence or is_complete(label.parent / CONFIDENCE_DIR / label.name)


def recipe(loaded: LoadedModel, settings, req: PseudoLabelRequest, students) -> dict[str, Any]:
    """What the labels are made with (``RECIPE``), as the folder's record keeps it."""
    return {
        "dataset": dataset_record(settings.data.adapter, settings.data.root),
        "split": req.split,
        "classes": list(loaded.card.classes),
        "source": req.source,
        "crf": bool(req.crf),
        "multiscale": bool(req.multiscale) and req.source == "seg",
        "checkpoint": str(Path(loaded.path).expanduser().resolve()),
        "checkpoint_sha256": file_digest(loaded.path),
        "student": [int(i) + 1 for i in students],
    }


def file_digest(path: Path) -> str:
    """sha256 of a file (a retrained checkpoint at the same path is another checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_recipe(out: Path, made_with: dict[str, Any]) -> None:
    """Refuse to resume into a folder whose record says its labels were made another way."""
    if not (Path(out) / META_FILE).is_file():
        return
    before = read_meta(out)
    for key in RECIPE:
        if before.get(key) != made_with[key]:
            raise UserError(
                f"{out}: holds pseudo-labels made with another {key} ({before.get(key)!r:.120} there, "
                f"{made_with[key]!r:.120} now); choose another --out or empty it"
            )


def _write_record(out: Path, made_with: dict, ids, req: PseudoLabelRequest, loaded, metrics) -> None:
    """``index.csv`` and ``pseudo_labels.json`` (``data.pseudo_labels``) for the labelled images."""
    scores = None
    if metrics is not None:
        scores = {
            "miou": float(metrics.miou),
            "pixel_accuracy": float(metrics.pixel_accuracy),
            "uncertain_share": float(metrics.uncertain_share),
        }
    write_index(out, ids, req.confidence)
    meta = {**made_with, "images": len(ids), "ids_sha256": ids_digest(ids), "confidence": req.confidence}
    meta |= {"stage": 2 if is_segmenter(loaded.model) else 1, "metrics": scores, "dupl": __version__}
    write_meta(out, meta)


def _protocol(loaded, settings, runtime, req, student_text, written, skipped, available) -> dict:
    crf, cam = settings.crf, cam_config(settings)
    if req.source == "cam":
        source = f"CAM (scales {cam.scales}, flip {cam.flip}, image-level labels), " + (
            f"two-pass CRF with background {crf.cam.tau_high:g}/{crf.cam.tau_low:g}"
            if req.crf
            else f"thresholds tau_h {crf.cam.tau_high:g} / tau_l {crf.cam.tau_low:g}"
        )
    else:
        tta = TTAConfig.from_settings(settings.eval, multiscale=req.multiscale)
        source = f"segmentation head ({tta.describe()}){', dense CRF' if req.crf else ''}"
    shown = available if not req.max_images else min(req.max_images, available)
    process = f" (process {runtime.process_index})" if runtime.num_processes > 1 else ""
    details = {"written / resumed": f"{written} / {skipped}{process}"}
    return protocol_table(loaded, req.split, f"{shown} images", source, student_text, details, runtime)


def _panels(loaded: LoadedModel) -> Callable[[dict], Panels]:
    """A sample's pictures: its CAMs (CAM source), pseudo-label and ground truth."""

    def panels(row: dict) -> Panels:
        present = np.flatnonzero(row["labels"] > 0)
        cams = row["cam"][present] if "cam" in row else None
        return sample_panels(
            row["image"],
            loaded.palette,
            loaded.classes,
            cams=cams,
            cam_classes=present + 1 if cams is not None else (),
            pseudo=row.get("label"),
            ground_truth=row["gt"],
        )

    return panels
