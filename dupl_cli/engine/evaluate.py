"""``dupl evaluate``: segmentation (or CAM pseudo-label) quality on a labelled split (docs/method.md §11).

One confusion matrix per evaluated variant, accumulated on the device and summed across processes.
The student comes from the checkpoint card (chosen by validation during training) or ``--student``;
only ``compat.eval_gt_student`` reproduces the release's pick by the evaluated split's GT.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
from dupl_cli.engine.metrics import ConfusionMeter, SegMetrics, metrics_from_confusion
from dupl_cli.engine.tta import TTAConfig, stride_of, tta_logits
from dupl_cli.errors import UserError
from dupl_cli.method.params import CamConfig


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


def cam_fn(model, indices: list[int], cam: CamConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Multi-scale CAM in [0, 1] at the input size (final-map CAM; mean over students for an ensemble)."""
    import torch.nn.functional as F

    from dupl_cli.method.cam import multiscale_cam

    scales, flip = cam.scales, cam.flip
    multiple = cam_multiple(stride_of(model), scales)

    def run(x: torch.Tensor) -> torch.Tensor:
        # Pad so every scaled view has sides divisible by the stride; crop the CAM back.
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, -w % multiple, 0, -h % multiple))
        cams = [
            multiscale_cam(model.students[i], padded, scales=scales, flip=flip)[0].float() for i in indices
        ]
        return torch.stack(cams).mean(0)[..., :h, :w]

    return run


def cam_multiple(stride: int, scales) -> int:
    """Smallest multiple of ``stride`` whose scaled sides stay multiples of ``stride``."""
    for k in range(1, 65):
        m = stride * k
        if all(int(s * m) % stride == 0 for s in scales):
            return m
    return stride


def cam_label(cam: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """§11 CAM pseudo-label: the best image-label class where its CAM exceeds ``threshold``, else 0."""
    scores = cam * labels.to(cam.device)[:, :, None, None]
    background = torch.full_like(scores[:, :1], threshold)
    return torch.cat([background, scores], 1).argmax(1)


def variants_for(loaded: LoadedModel, student: str, settings) -> tuple[list[tuple[str, list[int]]], str]:
    """(name, student indices) evaluated, and the protocol sentence for the student."""
    if student == "best" and settings.compat.eval_gt_student and len(loaded.model.students) > 1:
        return [("student 1", [0]), ("student 2", [1])], (
            "better of the two students on this split's ground truth (compat.eval_gt_student: release quirk)"
        )
    indices, why = student_choice(loaded, student)
    return [(why, indices)], why


def run_evaluate(
    loaded: LoadedModel, adapter, settings, runtime: Runtime, req: EvalRequest, *,
    show_progress: bool = True, log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    from dupl_cli.engine.crf import CrfParams, LabelRouter
    from dupl_cli.engine.validation import ShardView

    if not adapter.has_masks:
        raise UserError(
            f"split {req.split!r} of {settings.data.adapter} data has no ground-truth masks to evaluate against"
        )
    if len(adapter.classes) != len(loaded.classes) - 1:
        raise UserError(
            f"checkpoint {loaded.path} has {len(loaded.classes) - 1} classes, the dataset {len(adapter.classes)}"
        )
    limit = req.max_images or settings.eval.max_images
    shard = ShardView(adapter, runtime.rank, runtime.world, limit)
    total = min(limit, len(adapter)) if limit else len(adapter)
    tta = TTAConfig.from_settings(settings.eval, multiscale=req.multiscale)
    variants, student_text = variants_for(loaded, req.student, settings)
    k = len(loaded.classes)
    meters = [ConfusionMeter(k, runtime.device) for _ in variants]
    fns = [
        cam_fn(loaded.model, idx, cam_config(settings)) if req.cams else seg_fn(loaded.model, idx)
        for _, idx in variants
    ]
    crf = settings.crf
    params = CrfParams.for_cams(crf) if req.cams else CrfParams.for_segmentation(crf)
    masks: dict[tuple[int, int], torch.Tensor] = {}
    samples_for_report: dict[int, dict] = {}
    want_report = req.report is not None and runtime.is_main

    def record(key: tuple[int, int], pred) -> None:
        v, i = key
        pred_t = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred)
        meters[v].update(pred_t, masks.pop(key))
        if v == 0 and i in samples_for_report:
            samples_for_report[i]["prediction"] = pred_t.cpu().numpy().astype(np.uint8)

    pool = crf_pool_or_none(req.crf, settings)
    router = LabelRouter(pool, record)
    bar, task = progress(f"evaluate {req.split}", len(shard), show_progress and runtime.is_main)
    try:
        with bar:
            for i in range(len(shard)):
                sample = shard[i]
                x = to_tensor(sample.image, settings.data.mean, settings.data.std, runtime.device)
                labels = torch.from_numpy(sample.labels)[None]
                mask = torch.from_numpy(sample.mask.astype(np.int64))
                if want_report and len(samples_for_report) < req.report_samples:
                    samples_for_report[i] = {"id": sample.id, "image": sample.image, "labels": sample.labels,
                                             "gt": sample.mask}  # fmt: skip
                for v, fn in enumerate(fns):
                    key = (v, i)
                    masks[key] = mask
                    if req.cams:
                        cam = fn(x) if not tta.resize else _resized_cam(fn, x, tta.resize)
                        router.cams(key, sample.image, cam[0], sample.labels, params, crf.cam_tau_high, crf.cam_tau_low,
                                    without_crf=lambda cam=cam, labels=labels: cam_label(cam, labels, settings.eval.cam_threshold)[0])  # fmt: skip
                    else:
                        logits = tta_logits(fn, x, tta, multiple=stride_of(loaded.model))[0]
                        router.segmentation(key, sample.image, logits, params)
                bar.advance(task)
            router.drain()
    finally:
        if pool is not None:
            pool.close()

    results = [metrics_from_confusion(m.reduced(), loaded.classes) for m in meters]
    best = max(range(len(results)), key=lambda j: np.nan_to_num(results[j].miou, nan=-1.0))
    if len(variants) > 1:
        student_text += f": student {best + 1}"
    metrics = results[best]
    protocol = {
        "checkpoint": f"{loaded.path} ({loaded.how})",
        "split": f"{req.split} ({total} images{', capped' if limit else ''})",
        "source": "CAM pseudo-labels (multi-scale CAM with ground-truth image labels, docs/method.md §11)" if req.cams
        else "segmentation head",
        "student": student_text,
        "scales / flip": (
            f"CAM scales ({', '.join(f'{s:g}' for s in cam_config(settings).scales)}), flip {cam_config(settings).flip}, "
            f"background threshold {settings.eval.cam_threshold}" if req.cams else tta.describe()
        ),
        "crf": _crf_text(req, settings) if req.crf else "off",
        "processes": runtime.world,
    }  # fmt: skip
    payload = {"protocol": protocol, **metrics.to_json()}
    if runtime.is_main:
        write_outputs(req.out, metrics, payload)
        if want_report:
            _write_report(
                req, loaded, settings, runtime, metrics, protocol, samples_for_report, variants[best][1]
            )
    runtime.barrier()
    return {"payload": payload, "metrics": metrics, "protocol": protocol}


def _resized_cam(fn, x: torch.Tensor, size: int) -> torch.Tensor:
    import torch.nn.functional as F

    small = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return F.interpolate(fn(small), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _crf_text(req: EvalRequest, settings) -> str:
    c = settings.crf
    if req.cams:
        return (
            f"dense CRF on CAMs (gauss sxy {c.cam_gauss_sxy:g} compat {c.cam_gauss_compat:g}, bilateral sxy "
            f"{c.cam_bilateral_sxy:g} srgb {c.cam_bilateral_srgb:g} compat {c.cam_bilateral_compat:g}, "
            f"background {c.cam_tau_high:g}/{c.cam_tau_low:g}, {c.iters} iterations)"
        )
    return (
        f"dense CRF (unary -log softmax, gauss sxy {c.gauss_sxy:g} compat {c.gauss_compat:g}, bilateral sxy "
        f"{c.bilateral_sxy:g} srgb {c.bilateral_srgb:g} compat {c.bilateral_compat:g}, {c.iters} iterations)"
    )


def write_outputs(out: Path, metrics: SegMetrics, payload: dict) -> None:
    """metrics.json, confusion.csv (rows GT, columns prediction + uncertain), confusion.png."""
    from dupl_cli.engine.checkpoint import atomic_write, atomic_write_text
    from dupl_cli.engine.visualize import confusion_png

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


def _write_report(req, loaded, settings, runtime, metrics, protocol, samples, indices) -> None:
    from dupl_cli.engine.visualize import HtmlReport, confusion_png, sample_panels

    report = HtmlReport(f"dupl evaluate: {req.split}", loaded.classes, loaded.palette)
    report.add_protocol(protocol)
    report.add_metrics(metrics, confusion_png(np.asarray(metrics.matrix), metrics.class_names))
    fn = cam_fn(loaded.model, indices, cam_config(settings))
    for s in samples.values():
        x = to_tensor(s["image"], settings.data.mean, settings.data.std, runtime.device)
        labels = torch.from_numpy(s["labels"])[None]
        cam = fn(x)
        present = np.flatnonzero(s["labels"] > 0)
        pseudo = cam_label(cam, labels, settings.eval.cam_threshold)[0].cpu().numpy().astype(np.uint8)
        panels = sample_panels(
            s["image"], loaded.palette, loaded.classes, cams=cam[0, present].cpu().numpy(), cam_classes=present + 1,
            pseudo=None if req.cams else pseudo, prediction=s.get("prediction"), ground_truth=s["gt"],
        )  # fmt: skip
        report.add_sample(s["id"], panels)
    report.write(req.report)
