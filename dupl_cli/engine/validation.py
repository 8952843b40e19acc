"""Training-time validation (docs/method.md §11): CAM, aux-CAM and segmentation mIoU per student.

Images are resized to the training crop size; predictions are compared with the masks at their
own resolution. Each process evaluates its shard; confusion matrices are summed across processes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dupl_cli.engine.metrics import ConfusionMeter, metrics_from_confusion
from dupl_cli.models.geometry import pad_to_multiple, padded_size, resample_view

KINDS = ("cam", "aux_cam", "seg")


class ShardView:
    """Every ``world``-th sample of an adapter starting at ``rank`` (no padding, no duplicates)."""

    def __init__(self, adapter, rank: int, world: int, limit: int = 0) -> None:
        self._adapter = adapter
        total = len(adapter) if limit <= 0 else min(limit, len(adapter))
        self._indices = list(range(rank, total, world))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int):
        return self._adapter[self._indices[i]]

    @property
    def ids(self) -> list[str]:
        return [self._adapter.ids[i] for i in self._indices]

    def path_of(self, i: int):
        return self._adapter.path_of(self._indices[i])


def cam_to_prediction(cam: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """B×C normalised CAM restricted to the image's classes → label map (0 where max <= threshold)."""
    scores = cam * labels[:, :, None, None]
    background = torch.full_like(scores[:, :1], threshold)
    return torch.cat([background, scores], dim=1).argmax(1)


def segment_at(student, images: torch.Tensor, size) -> torch.Tensor:
    """Segmentation logits of ``images`` mapped onto ``size`` (exact when the stride padded them)."""
    stride = int(getattr(student.backbone, "stride", 1) or 1)
    view = tuple(images.shape[-2:])
    logits = student.segment(pad_to_multiple(images, stride)).float()
    return resample_view(logits, tuple(size), view=view, padded=padded_size(view, stride))


@torch.no_grad()
def validate(model, loader, *, num_classes: int, class_names: list[str], cam_scales, cam_threshold: float, device) -> dict[str, float]:
    """mIoU (in %) for ``{kind}_s{k}`` with kind in cam, aux_cam, seg and k in 1, 2."""
    from dupl_cli.method.cam import multiscale_cam

    was_training = model.training
    model.eval()
    meters = {f"{kind}_s{k}": ConfusionMeter(num_classes + 1, device) for kind in KINDS for k in (1, 2)}
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
                meters[f"{kind}_s{k}"].update(cam_to_prediction(value, labels, cam_threshold), masks)
    model.train(was_training)
    names = ["background", *class_names]
    return {key: 100.0 * metrics_from_confusion(meter.reduced(), names).miou for key, meter in meters.items()}
