"""``dupl evaluate``: segmentation (or CAM pseudo-label) quality on a labelled split (docs/method.md §11).

One confusion matrix per evaluated variant, accumulated on the device and summed across processes.
The student comes from the checkpoint card (chosen by validation during training) or ``--student``;
only ``compat.eval_gt_student`` reproduces the release's pick by the evaluated split's GT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dupl_cli.config.method_params import cam_config
from dupl_cli.core.errors import UserError
from dupl_cli.core.textfile import read_json
from dupl_cli.core.writable import check_writable
from dupl_cli.data.base import shard
from dupl_cli.evaluation.class_match import aligned
from dupl_cli.evaluation.metrics import SegMetrics, metrics_from_confusion
from dupl_cli.evaluation.plots import require_matplotlib
from dupl_cli.evaluation.visualize import sample_panels
from dupl_cli.method.thresholds import cam_to_label
from dupl_cli.models.segmenter import is_segmenter
from dupl_cli.predict.loop import (
    LoadedModel,
    PredictOptions,
    ProgressBar,
    Runtime,
    dataset_items,
    predict,
    to_tensor,
)
from dupl_cli.predict.routes import CamRoute, SegRoute, cam_fn
from dupl_cli.predict.sinks import ConfusionSink, ReportSamples, write_metrics
from dupl_cli.predict.tta import TTAConfig
from dupl_cli.tasks.report import Panels, protocol_table, write_report


@dataclass
class EvalRequest:
    split: str
    out: Path
    multiscale: bool = False
    crf: bool = False
    student: str = "best"
    max_images: int = 0
    cams: bool = False
    report: Path | None = None
    report_samples: int = 8


@dataclass
class EvalResult:
    metrics: SegMetrics  # of the reported variant
    protocol: dict  # how the numbers were made, as printed and saved
    payload: dict  # metrics.json
    out: Path


def variants_for(loaded: LoadedModel, student: str, settings) -> tuple[list[tuple[str, list[int]]], str]:
    """(name, student indices) evaluated, and the protocol sentence for the student."""
    if student == "best" and settings.compat.eval_gt_student and len(loaded.model.students) > 1:
        return [("student 1", [0]), ("student 2", [1])], (
            "better of the two students on this split's ground truth (compat.eval_gt_student: release quirk)"
        )
    pick = loaded.pick(student)
    return [(pick.text, list(pick.indices))], pick.text


def _route(loaded: LoadedModel, indices: list[int], settings, req: EvalRequest, tta) -> CamRoute | SegRoute:
    """CAMs labelled two-way at eval.cam_threshold (``--cams``), else the segmentation head through TTA."""
    if req.cams:
        threshold = settings.eval.cam_threshold
        return CamRoute.of(loaded.model, indices, settings, threshold, None, resize=tta.resize)
    return SegRoute.of(loaded.model, indices, settings, tta)


def _check(loaded: LoadedModel, adapter, settings, req: EvalRequest):
    """The adapter in the checkpoint's class order (classes compared by name) and a note if remapped."""
    if req.cams and is_segmenter(loaded.model):
        raise UserError(f"{loaded.path}: a stage-2 segmenter has no CAMs; --cams needs a stage-1 run")
    if not adapter.has_masks:
        data = settings.data.adapter
        raise UserError(f"split {req.split!r} of {data} data has no ground-truth masks to evaluate against")

    return aligned(adapter, loaded, f"the {settings.data.adapter} dataset at {settings.data.root}")


def capped_tag(limit: int) -> str:
    """Folder-name suffix of an evaluation of only the first ``limit`` images ("" for all)."""
    return f"-first{limit}" if limit else ""


def _keep_full_evaluation(out: Path, limit: int) -> None:
    """A capped evaluation must not replace the metrics of a full one."""
    previous = out / "metrics.json"
    if not limit or not previous.is_file():
        return
    try:
        old = read_json(previous, "metrics file")
    except UserError:  # unreadable: not an evaluation to keep
        return
    if not isinstance(old, dict):
        return
    old_limit = old.get("max_images", 0)
    if not old_limit:
        raise UserError(
            f"{out}: holds a full evaluation; an evaluation capped at {limit} images would overwrite it. "
            "Choose another --out"
        )


def run_evaluate(
    loaded: LoadedModel,
    adapter,
    settings,
    runtime: Runtime,
    req: EvalRequest,
    *,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvalResult:
    adapter, remap_note = _check(loaded, adapter, settings, req)
    require_matplotlib("dupl evaluate (its confusion.png)")  # before the split is processed, not after
    if runtime.is_main:  # before the split is processed, not after
        check_writable(req.out, "evaluation folder")
        if req.report is not None:
            check_writable(Path(req.report).parent, "report folder")
    limit = req.max_images or settings.eval.max_images
    _keep_full_evaluation(req.out, limit)
    own_part = shard(adapter, runtime.process_index, runtime.num_processes, limit)
    tta = TTAConfig.from_settings(settings.eval, multiscale=req.multiscale)
    variants, student_text = variants_for(loaded, req.student, settings)
    routes = [_route(loaded, indices, settings, req, tta) for _, indices in variants]
    confusion = ConfusionSink(len(loaded.classes), runtime.device, routes=len(routes))
    want_report = req.report is not None and runtime.is_main
    samples = ReportSamples(req.report_samples, num_classes=len(loaded.classes)) if want_report else None
    sinks = [confusion] if samples is None else [confusion, samples]
    options = PredictOptions.from_settings(settings, req.crf)
    with ProgressBar(f"evaluate {req.split}", len(own_part), show_progress and runtime.is_main) as bar:
        predict(dataset_items(own_part), routes, sinks, runtime, options, bar)

    results = [metrics_from_confusion(m.reduced(), loaded.classes) for m in confusion.meters]
    best = max(range(len(results)), key=lambda j: np.nan_to_num(results[j].miou, nan=-1.0))
    if len(variants) > 1:
        student_text += f": student {best + 1}"
    total = min(limit, len(adapter)) if limit else len(adapter)
    protocol = _protocol(loaded, settings, runtime, req, tta, student_text, total, limit)
    if remap_note:
        protocol["classes"] = remap_note
    payload = {
        "protocol": protocol,
        "selection": loaded.selection_record(req.split),
        "images": total,
        "max_images": limit,
        **results[best].to_json(),
    }
    if runtime.is_main:
        write_metrics(req.out, results[best], payload)
        if samples is not None:
            what = "CAM pseudo-labels" if req.cams else "segmentation"
            panels = _panels(req, loaded, settings, runtime, variants[best][1])
            title = f"dupl evaluate: {what} on {req.split}"
            write_report(req.report, title, loaded, protocol, results[best], samples, panels)
    runtime.barrier()
    return EvalResult(results[best], protocol, payload, req.out)


def _protocol(loaded, settings, runtime, req: EvalRequest, tta, student_text, total, limit) -> dict:
    cam = cam_config(settings)
    cam_views = (
        f"CAM scales ({', '.join(f'{s:g}' for s in cam.scales)}), flip {cam.flip}, "
        f"background threshold {settings.eval.cam_threshold}"
    )
    source = (
        "CAM pseudo-labels (multi-scale CAM with ground-truth image labels, docs/method.md §11)"
        if req.cams
        else "segmentation head"
    )
    details = {
        "scales / flip": cam_views if req.cams else tta.describe(),
        "crf": _crf_text(req, settings) if req.crf else "off",
    }
    images = f"{total} images{', capped' if limit else ''}"
    return protocol_table(loaded, req.split, images, source, student_text, details, runtime)


def _crf_text(req: EvalRequest, settings) -> str:
    c = settings.crf
    if req.cams:
        return (
            f"dense CRF on CAMs (gauss sxy {c.cam.gauss_sxy:g} compat {c.cam.gauss_compat:g}, bilateral sxy "
            f"{c.cam.bilateral_sxy:g} srgb {c.cam.bilateral_srgb:g} compat {c.cam.bilateral_compat:g}, "
            f"background {c.cam.tau_high:g}/{c.cam.tau_low:g}, {c.iters} iterations)"
        )
    return (
        f"dense CRF (unary -log softmax, gauss sxy {c.gauss_sxy:g} compat {c.gauss_compat:g}, bilateral sxy "
        f"{c.bilateral_sxy:g} srgb {c.bilateral_srgb:g} compat {c.bilateral_compat:g}, {c.iters} iterations)"
    )


def _panels(req: EvalRequest, loaded: LoadedModel, settings, runtime: Runtime, indices) -> Callable:
    """A sample's pictures: its CAMs (of the reported student), CAM pseudo-label, prediction and GT."""
    fn = cam_fn(loaded.model, indices, cam_config(settings))

    def panels(row: dict) -> Panels:
        x = to_tensor(row["image"], settings.data.mean, settings.data.std, runtime.device)
        cam = fn(x)
        present = np.flatnonzero(row["labels"] > 0)
        labels = torch.from_numpy(row["labels"])[None]
        pseudo = cam_to_label(cam, labels, tau_high=settings.eval.cam_threshold)[0]
        return sample_panels(
            row["image"],
            loaded.palette,
            loaded.classes,
            cams=cam[0, present].cpu().numpy(),
            cam_classes=present + 1,
            pseudo=None if req.cams else pseudo.cpu().numpy().astype(np.uint8),
            prediction=row.get("label"),
            ground_truth=row["gt"],
        )

    return panels
