"""Training-time validation (docs/method.md §11): CAM, aux-CAM and segmentation mIoU per student.

Images are resized to the training crop size; predictions are compared with the masks at their
own resolution. Each process evaluates its shard (``predict.ShardView``); confusion matrices are
summed across processes. Batched at one size, it shares the prediction pipeline's pieces (shard,
CAM rule, confusion meter) but not its per-image loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dupl_cli.engine.metrics import ConfusionMeter, metrics_from_confusion
from dupl_cli.models.geometry import pad_to_multiple, padded_size, resample_view

KINDS = ("cam", "aux_cam", "seg")


def segment_at(student, images: torch.Tensor, size) -> torch.Tensor:
    """Segmentation logits of ``images`` mapped onto ``size`` (exact when the stride padded them)."""
    stride = int(getattr(student.backbone, "stride", 1) or 1)
    view = tuple(images.shape[-2:])
    logits = student.segment(pad_to_multiple(images, stride)).float()
    return resample_view(logits, tuple(size), view=view, padded=padded_size(view, stride))


@torch.no_grad()
def validate(
    model, loader, *, num_classes: int, class_names: list[str], cam_scales, cam_threshold: float, device
) -> dict[str, float]:
    """mIoU (in %) for ``{kind}_s{k}`` with kind in cam, aux_cam, seg and k each student (1, 2)."""
    from dupl_cli.method.cam import multiscale_cam
    from dupl_cli.method.thresholds import cam_to_label

    was_training = model.training
    model.eval()
    ks = range(1, len(model.students) + 1)
    meters = {f"{kind}_s{k}": ConfusionMeter(num_classes + 1, device) for kind in KINDS for k in ks}
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True).float()
        size = masks.shape[-2:]
        for k, student in enumerate(model.students, start=1):
            seg = segment_at(student, images, size)
            meters[f"seg_s{k}"].update(seg.argmax(1), masks)
            cam, cam_aux = multiscale_cam(student, images, scales=tuple(cam_scales), flip=True)
            for kind, value in (("cam", cam), ("aux_cam", cam_aux)):
                value = F.interpolate(value, size=size, mode="bilinear", align_corners=False)
                prediction = cam_to_label(value, labels, tau_high=cam_threshold)  # two-way rule
                meters[f"{kind}_s{k}"].update(prediction, masks)
    model.train(was_training)
    names = ["background", *class_names]
    mious = {key: metrics_from_confusion(meter.reduced(), names).miou for key, meter in meters.items()}
    return {key: 100.0 * miou for key, miou in mious.items()}
