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
import torch

from dupl_cli.engine.evaluate import cam_fn, write_outputs
from dupl_cli.engine.infer import (
    LoadedModel,
    Runtime,
    crf_pool_or_none,
    progress,
    seg_fn,
    student_choice,
    to_tensor,
)
from dupl_cli.engine.method_config import cam_config
from dupl_cli.engine.metrics import ConfusionMeter, metrics_from_confusion
from dupl_cli.engine.tta import TTAConfig, stride_of, tta_logits
from dupl_cli.labels import IGNORE_INDEX

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


def thresholded_cam_label(
    cam: torch.Tensor, labels: torch.Tensor, tau_high: float, tau_low: float
) -> torch.Tensor:
    """§4.2: class k where its CAM > τ_h, background where the best CAM ≤ τ_l, 255 between."""
    scores = cam * labels.to(cam.device)[:, :, None, None]
    value, index = scores.max(1)
    out = torch.full_like(index, IGNORE_INDEX)
    out[value > tau_high] = index[value > tau_high] + 1
    out[value <= tau_low] = 0
    return out


def run_pseudo_label(
    loaded: LoadedModel, adapter, settings, runtime: Runtime, req: PseudoLabelRequest, *,
    show_progress: bool = True, log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    from dupl_cli.engine.crf import CrfParams, LabelRouter
    from dupl_cli.engine.validation import ShardView
    from dupl_cli.engine.visualize import load_mask, save_mask

    limit = req.max_images
    shard = ShardView(adapter, runtime.rank, runtime.world, limit)
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    indices, student_text = student_choice(loaded, req.student)
    fn = (
        cam_fn(loaded.model, indices, cam_config(settings))
        if req.source == "cam"
        else seg_fn(loaded.model, indices)
    )
    tta = TTAConfig.from_settings(settings.eval, multiscale=req.multiscale)
    crf = settings.crf
    params = CrfParams.for_cams(crf) if req.source == "cam" else CrfParams.for_segmentation(crf)
    scoring = req.evaluate and adapter.has_masks
    if req.evaluate and not adapter.has_masks:
        log(f"--evaluate: split {req.split!r} has no ground-truth masks; nothing to score")
    meter = ConfusionMeter(len(loaded.classes), "cpu")
    ids = shard.ids
    targets = [out / f"{sample_id}.png" for sample_id in ids]
    todo = [i for i, t in enumerate(targets) if not is_complete(t)]
    skipped = len(ids) - len(todo)
    if skipped and runtime.is_main:
        log(f"resuming: {skipped} of {len(ids)} pseudo-labels already complete in {out}")
    report_rows: dict[int, dict] = {}
    want_report = req.report is not None and runtime.is_main
    gts: dict[int, np.ndarray] = {}

    def finish(i: int, label: np.ndarray) -> None:
        save_mask(targets[i], label, loaded.palette)
        if scoring:
            meter.update(
                torch.from_numpy(label.astype(np.int64)), torch.from_numpy(gts.pop(i).astype(np.int64))
            )
        if i in report_rows:
            report_rows[i]["pseudo"] = label

    pool = crf_pool_or_none(req.crf, settings)
    router = LabelRouter(pool, finish)
    bar, task = progress(f"pseudo-label {req.split}", len(ids), show_progress and runtime.is_main)
    try:
        with bar:
            if scoring:  # finished files are scored from disk, without decoding their images
                for i in sorted(set(range(len(ids))) - set(todo)):
                    meter.update(torch.from_numpy(load_mask(targets[i]).astype(np.int64)),
                                 torch.from_numpy(shard[i].mask.astype(np.int64)))  # fmt: skip
            bar.advance(task, skipped)
            for i in todo:
                sample = shard[i]
                if scoring:
                    gts[i] = sample.mask
                if want_report and len(report_rows) < req.report_samples:
                    report_rows[i] = {
                        "id": sample.id,
                        "image": sample.image,
                        "labels": sample.labels,
                        "gt": sample.mask,
                    }
                x = to_tensor(sample.image, settings.data.mean, settings.data.std, runtime.device)
                labels = torch.from_numpy(sample.labels)[None]
                if req.source == "cam":
                    cam = fn(x)
                    if i in report_rows:
                        report_rows[i]["cam"] = cam[0].cpu().numpy()
                    router.cams(i, sample.image, cam[0], sample.labels, params, crf.cam.tau_high, crf.cam.tau_low,
                                without_crf=lambda cam=cam, labels=labels: thresholded_cam_label(cam, labels, crf.cam.tau_high, crf.cam.tau_low)[0]
                                .byte().cpu().numpy())  # fmt: skip
                else:
                    logits = tta_logits(fn, x, tta, multiple=stride_of(loaded.model))[0]
                    router.segmentation(i, sample.image, logits, params)
                bar.advance(task)
            router.drain()
    finally:
        if pool is not None:
            pool.close()

    source_text = (
        f"CAM (scales {cam_config(settings).scales}, flip {cam_config(settings).flip}, image-level labels), "
        + (f"two-pass CRF with background {crf.cam.tau_high:g}/{crf.cam.tau_low:g}" if req.crf
           else f"thresholds tau_h {crf.cam.tau_high:g} / tau_l {crf.cam.tau_low:g}")
        if req.source == "cam" else f"segmentation head ({tta.describe()}){', dense CRF' if req.crf else ''}"
    )  # fmt: skip
    protocol = {
        "checkpoint": f"{loaded.path} ({loaded.how})",
        "split": f"{req.split} ({len(adapter) if not limit else min(limit, len(adapter))} images)",
        "source": source_text,
        "student": student_text,
        "written / resumed": f"{len(todo)} / {skipped}"
        + (f" (process {runtime.rank})" if runtime.world > 1 else ""),
        "processes": runtime.world,
    }
    result = {
        "protocol": protocol,
        "out": str(out),
        "written": len(todo),
        "skipped": skipped,
        "metrics": None,
    }
    if scoring:
        metrics = metrics_from_confusion(meter.reduced(), loaded.classes)
        result["metrics"] = metrics
        if runtime.is_main:
            write_outputs(
                out.parent / f"{out.name}_metrics", metrics, {"protocol": protocol, **metrics.to_json()}
            )
    if want_report:
        _write_report(req, loaded, result, report_rows)
    runtime.barrier()
    return result


def _write_report(req, loaded, result, rows) -> None:
    from dupl_cli.engine.visualize import HtmlReport, confusion_png, sample_panels

    report = HtmlReport(f"dupl pseudo-label: {req.split}", loaded.classes, loaded.palette)
    report.add_protocol(result["protocol"])
    if result["metrics"] is not None:
        m = result["metrics"]
        report.add_metrics(m, confusion_png(np.asarray(m.matrix), m.class_names))
    for row in rows.values():
        present = np.flatnonzero(row["labels"] > 0)
        cams = row["cam"][present] if "cam" in row else None
        report.add_sample(row["id"], sample_panels(
            row["image"], loaded.palette, loaded.classes, cams=cams, cam_classes=present + 1 if cams is not None else (),
            pseudo=row.get("pseudo"), ground_truth=row["gt"],
        ))  # fmt: skip
    report.write(req.report)
