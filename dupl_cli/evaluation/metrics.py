"""Segmentation metrics from one confusion matrix accumulated on the device (docs/method.md §11).

Rows are ground truth (0 background, 1..C classes; 255 ignored), columns are predictions with one
extra last column for "uncertain" predictions (255 in pseudo-labels): such a pixel counts as a miss
(false negative) for its ground-truth class but as a false positive for no class, so leaving pixels
undecided never inflates precision or IoU unnoticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dupl_cli.core.labels import IGNORE_INDEX


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """K×(K+1) int64 counts, K = num_classes including background; one bincount, no Python loop."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.numel()} pixels, ground truth {target.numel()}")
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    target = target[keep]
    pred = pred[keep]
    # Anything outside 0..K-1 (255 = uncertain) goes to the extra column.
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, torch.full_like(pred, num_classes))
    counts = torch.bincount(target * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def reduce_across_processes(matrix: torch.Tensor) -> torch.Tensor:
    """Sum a confusion matrix over all processes (torch.distributed / accelerate); no-op when alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        matrix = matrix.clone()
        dist.all_reduce(matrix, op=dist.ReduceOp.SUM)
    return matrix


class ConfusionMeter:
    """Accumulates a confusion matrix on the prediction's device; reduce once at the end."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.to(self.matrix.device)
        self.matrix += confusion_matrix(pred, target.to(pred.device), self.num_classes)

    def reduced(self) -> torch.Tensor:
        return reduce_across_processes(self.matrix)


def class_iou(matrix: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per class of a K×(K+1) matrix (float64); NaN for a class neither in the
    ground truth nor predicted."""
    m = matrix.detach().double().cpu()
    k = m.shape[0]
    tp = torch.diagonal(m[:, :k])
    union = m.sum(1) + m[:, :k].sum(0) - tp  # GT pixels (uncertain ones included) + predicted - both
    return torch.where(union > 0, tp / union, torch.tensor(float("nan"), dtype=torch.float64))


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass
class SegMetrics:
    class_names: list[str]  # background first
    iou: list[float]  # NaN for classes absent from the ground truth and never predicted
    precision: list[float]
    recall: list[float]
    over_activation: list[float]  # FP / (TP + FP), paper Fig. 7
    present: list[bool]  # class occurs in the ground truth
    miou: float  # mean IoU over classes present in the ground truth
    pixel_accuracy: float
    uncertain_share: float  # labelled pixels predicted "uncertain" (255)
    labelled_pixels: int
    matrix: list[list[int]] = field(repr=False)

    def to_json(self) -> dict:
        per_class = {
            name: {
                "iou": _nan_to_none(self.iou[i]),
                "precision": _nan_to_none(self.precision[i]),
                "recall": _nan_to_none(self.recall[i]),
                "over_activation": _nan_to_none(self.over_activation[i]),
                "present_in_gt": self.present[i],
            }
            for i, name in enumerate(self.class_names)
        }
        return {
            "miou": _nan_to_none(self.miou),
            "pixel_accuracy": _nan_to_none(self.pixel_accuracy),
            "uncertain_share": self.uncertain_share,
            "labelled_pixels": self.labelled_pixels,
            "classes_present": int(sum(self.present)),
            "per_class": per_class,
            "confusion_matrix": self.matrix,
        }


def metrics_from_confusion(matrix: torch.Tensor, class_names: list[str]) -> SegMetrics:
    """IoU = TP/(TP+FP+FN), precision, recall, over-activation; mIoU over classes present in the GT."""
    m = matrix.detach().double().cpu()
    k = m.shape[0]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}-class confusion matrix")
    tp = torch.diagonal(m[:, :k])
    gt_count = m.sum(1)  # includes pixels predicted "uncertain"
    pred_count = m[:, :k].sum(0)
    fp = pred_count - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = class_iou(m)
    precision = torch.where(pred_count > 0, tp / pred_count, nan)
    recall = torch.where(gt_count > 0, tp / gt_count, nan)
    over = torch.where(pred_count > 0, fp / pred_count, nan)
    present = gt_count > 0
    total = gt_count.sum()
    miou = float(iou[present].mean()) if bool(present.any()) else float("nan")
    return SegMetrics(
        class_names=list(class_names),
        iou=iou.tolist(),
        precision=precision.tolist(),
        recall=recall.tolist(),
        over_activation=over.tolist(),
        present=present.tolist(),
        miou=miou,
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        uncertain_share=float(m[:, k].sum() / total) if total > 0 else 0.0,
        labelled_pixels=int(total),
        matrix=matrix.detach().cpu().long().tolist(),
    )
