"""``dupl pseudo-label``: one palette PNG per image (255 = uncertain) for second-stage training.

Sources: ``cam`` (multi-scale CAM with the image-level labels; thresholds τ_h/τ_l of §4.2, or the
two-pass CRF of §11) or ``seg`` (the segmentation head through TTA, optionally CRF).
Resumable: a finished PNG is skipped; writes go to a temporary file renamed into place, so a file
that exists is complete. ``--evaluate`` scores all files (new and resumed) against ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dupl_cli.config.method_params import cam_config
from dupl_cli.data.base import shard
from dupl_cli.evaluation.class_match import aligned
from dupl_cli.evaluation.metrics import SegMetrics, metrics_from_confusion
from dupl_cli.evaluation.visualize import load_mask, sample_panels
from dupl_cli.predict.loop import (
    LoadedModel,
    PredictOptions,
    ProgressBar,
    Runtime,
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


def _route(loaded: LoadedModel, indices, settings, req: PseudoLabelRequest) -> CamRoute | SegRoute:
    """CAMs labelled three-way at crf.cam's tau_h / tau_l, else the segmentation head through TTA."""
    if req.source == "cam":
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
    scoring = req.evaluate and adapter.has_masks
    if req.evaluate and not adapter.has_masks:
        log(f"--evaluate: split {req.split!r} has no ground-truth masks; nothing to score")
    targets = [out / f"{sample_id}.png" for sample_id in own_part.ids]
    todo = [i for i, t in enumerate(targets) if not is_complete(t)]
    skipped = len(targets) - len(todo)
    if skipped and runtime.is_main:
        log(f"resuming: {skipped} of {len(targets)} pseudo-labels already complete in {out}")
    confusion = ConfusionSink(len(loaded.classes), runtime.device)
    want_report = req.report is not None and runtime.is_main
    ranked = len(loaded.classes) if adapter.has_masks else None  # worst first when there is ground truth
    samples = ReportSamples(req.report_samples, keep_cams=req.source == "cam", num_classes=ranked)
    sinks = [MaskSink(out, loaded.palette), *([confusion] if scoring else [])]
    sinks += [samples] if want_report else []
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
    runtime.barrier()
    return result


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
