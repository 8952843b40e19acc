"""How good the step's labels are (docs/method.md §8.1): logged, never part of the loss.

Each statistic is a pair of pixel counts (hits, pixels) kept on the device; the trainer sums both
over a log interval and divides once, so a step with no pixel to count weighs nothing and an
interval with none logs nothing. Without ground truth: the consistency mask's share of the image
and the strong view's agreement with its targets. With each view's ground-truth mask
(``train.label_quality``): the refined and the learned labels' accuracy and foreground IoU, the
noise filter's precision and recall, and the consistency targets' accuracy and foreground IoU.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from dupl_cli.core.labels import IGNORE_INDEX


class ConsistencyPixels(NamedTuple):
    """One student's L_reg pixels, all B×H×W in its view."""

    target: torch.Tensor  # int64: its confident weak argmax
    mask: torch.Tensor  # bool: the pixels L_reg trains
    strong: torch.Tensor  # int64: the strong view's argmax, carried back to the weak view
    region: torch.Tensor  # bool: the pixels L_reg could train (the image box, or all with padding)


def _pair(hits: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return torch.stack([hits.sum(), pixels.sum()]).float()


def _foreground_iou(label: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Pixels where both say the same foreground class over pixels where either says foreground
    (both set): background dominates the plain accuracy, this is what mIoU sees."""
    both = (label != IGNORE_INDEX) & (truth != IGNORE_INDEX)
    return _pair(both & (label == truth) & (truth != 0), both & ((label != 0) | (truth != 0)))


def consistency_counts(parts: list[ConsistencyPixels]) -> dict[str, torch.Tensor]:
    """reg_share: masked pixels of the region; strong_agree: masked pixels where the strong view's
    prediction equals its target (how well the perturbed view lines up with what it learns)."""
    mask = torch.cat([p.mask for p in parts])
    region = torch.cat([p.region for p in parts])
    agree = torch.cat([p.strong == p.target for p in parts]) & mask
    return {"reg_share": _pair(mask, region), "strong_agree": _pair(agree, mask)}


def label_counts(
    refined: torch.Tensor, learned: torch.Tensor, noise: torch.Tensor | None, truth: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Accuracy of the PAR-refined labels and of the labels learned after the noise filter, where both
    label and ``truth`` are set; the filter's precision (flagged foreground that was wrong) and recall
    (wrong foreground that was flagged). All N×H×W in the same view; ``noise`` None before ANF."""
    known = truth != IGNORE_INDEX
    labelled = known & (refined != IGNORE_INDEX)
    wrong = labelled & (refined != truth)
    counts = {
        "label_acc": _pair(labelled & ~wrong, labelled),
        "label_fg_iou": _foreground_iou(refined, truth),
        "learned_acc": _pair(known & (learned == truth), known & (learned != IGNORE_INDEX)),
        "learned_fg_iou": _foreground_iou(learned, truth),
    }
    if noise is not None:
        foreground = refined != 0
        flagged = noise & labelled & foreground
        counts["noise_precision"] = _pair(flagged & wrong, flagged)
        counts["noise_recall"] = _pair(flagged & wrong, wrong & foreground)
    return counts


def reg_target_counts(parts: list[ConsistencyPixels], truth: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accuracy of the consistency targets on the masked pixels ``truth`` (per student, B×H×W) knows."""
    hits, pixels = [], []
    for part, gt in zip(parts, truth, strict=True):
        known = part.mask & (gt != IGNORE_INDEX)
        hits.append(known & (part.target == gt))
        pixels.append(known)
    targets = torch.cat([p.target.masked_fill(~p.mask, IGNORE_INDEX) for p in parts])
    return {
        "reg_target_acc": _pair(torch.cat(hits), torch.cat(pixels)),
        "reg_target_fg_iou": _foreground_iou(targets, torch.cat(truth)),
    }
