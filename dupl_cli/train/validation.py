"""Training-time validation (docs/method.md §11): CAM, aux-CAM and segmentation mIoU per student (a
stage-2 segmenter: segmentation only).

Images are resized to the training crop size and run in batches; each prediction is resampled onto
its own mask's resolution in one bilinear step (images of different sizes share a batch: masks are
padded with ignore). Each process evaluates its shard (``data.base.shard``); the confusion matrices
are summed across processes in one reduction, so every rank works and all get the same scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dupl_cli.evaluation.metrics import ConfusionMeter, metrics_from_confusion, reduce_across_processes
from dupl_cli.method.cam import backbone_stride, multiscale_cam
from dupl_cli.method.thresholds import cam_to_label
from dupl_cli.models.geometry import pad_to_multiple, padded_size

KINDS = ("cam", "aux_cam", "seg")


def resample_each(
    maps: torch.Tensor, sizes: torch.Tensor, out: tuple[int, int], *, view=None, padded=None
) -> torch.Tensor:
    """B×C×h×w maps of inputs padded from ``view`` to ``padded`` pixels (default: nothing padded),
    each stretched from its view onto its own ``sizes[b]`` = (H_b, W_b) pixels at the top left of an
    ``out`` canvas (the rest repeats the border: the masks ignore it).

    Output pixel y of image b samples the view at (y + 0.5) * view / H_b - 0.5, bilinear, as
    ``F.interpolate(align_corners=False)`` does for one image: one batched ``grid_sample``.
    """
    view = tuple(maps.shape[-2:]) if view is None else tuple(view)
    padded = view if padded is None else tuple(padded)
    sizes = sizes.to(maps.device, torch.float32)
    axes = []
    for d, n in enumerate(out):
        centres = torch.arange(n, device=maps.device, dtype=torch.float32) + 0.5
        axes.append(2 * centres[None] * (view[d] / padded[d]) / sizes[:, d : d + 1] - 1)  # B×n
    gy, gx = axes
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # B×H×W×(x, y)
    return F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def segment_at(
    student, images: torch.Tensor, out, sizes: torch.Tensor | None = None, *, logits=None
) -> torch.Tensor:
    """Segmentation logits of ``images`` mapped onto each image's ``sizes`` (default: all ``out``) at
    the top left of an ``out`` canvas; exact when the stride padded them. ``logits``: the student's
    output on the stride-padded images, when a forward already computed them."""
    sizes = torch.tensor([out] * len(images)) if sizes is None else sizes
    stride = int(getattr(student.backbone, "stride", 1) or 1)
    view = tuple(images.shape[-2:])
    if logits is None:
        logits = student.segment(pad_to_multiple(images, stride))
    return resample_each(logits.float(), sizes, out, view=view, padded=padded_size(view, stride))


def confusions(model, loader, *, num_classes: int, cam_scales, cam_threshold: float, device) -> dict:
    """This process's confusion matrices (not reduced) for ``{kind}_s{k}``, over its loader (a stage-2
    segmenter, without classifiers: ``seg_s1`` alone)."""
    ks = range(1, len(model.students) + 1)
    kinds = KINDS if hasattr(model.students[0], "classifier") else ("seg",)
    meters = {f"{kind}_s{k}": ConfusionMeter(num_classes + 1, device) for kind in kinds for k in ks}
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True).float()
        sizes, out = batch["orig_size"], tuple(masks.shape[-2:])
        for k, student in enumerate(model.students, start=1):
            if kinds == ("seg",):
                meters[f"seg_s{k}"].update(segment_at(student, images, out, sizes).argmax(1), masks)
                continue
            # one forward gives the segmentation and the CAMs of the un-flipped view at scale 1
            output = student(pad_to_multiple(images, backbone_stride(student)))
            seg = segment_at(student, images, out, sizes, logits=output.seg)
            meters[f"seg_s{k}"].update(seg.argmax(1), masks)
            cam, cam_aux = multiscale_cam(
                student, images, scales=tuple(cam_scales), flip=True, forward=output
            )
            for kind, value in (("cam", cam), ("aux_cam", cam_aux)):
                value = resample_each(value, sizes, out)
                prediction = cam_to_label(value, labels, tau_high=cam_threshold)  # two-way rule
                meters[f"{kind}_s{k}"].update(prediction, masks)
    return {key: meter.matrix for key, meter in meters.items()}


@torch.no_grad()
def validate(
    model, loader, *, num_classes: int, class_names: list[str], cam_scales, cam_threshold: float, device
) -> dict[str, float]:
    """mIoU (in %) for ``{kind}_s{k}`` with kind in cam, aux_cam, seg and k each student (1, 2)."""
    was_training = model.training
    model.eval()
    try:
        local = confusions(
            model, loader, num_classes=num_classes, cam_scales=cam_scales,
            cam_threshold=cam_threshold, device=device,
        )  # fmt: skip
    finally:
        model.train(was_training)
    keys = list(local)  # the same order on every rank
    summed = reduce_across_processes(torch.stack([local[key] for key in keys]))  # one collective
    names = ["background", *class_names]
    return {key: 100.0 * metrics_from_confusion(m, names).miou for key, m in zip(keys, summed, strict=True)}
