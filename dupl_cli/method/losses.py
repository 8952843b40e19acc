"""DuPL losses (docs/method.md §7), all evaluated in float32 even under bf16/fp16 autocast."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from dupl_cli.core.labels import IGNORE_INDEX


def _fp32(device: torch.device):
    """Disable autocast so that matmuls, softmax and reductions run in float32."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) float32 upsampling of logits to the label size."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft margin loss, mean over classes and batch."""
    with _fp32(logits.device):
        return F.multilabel_soft_margin_loss(logits.float(), labels.float())


def token_affinity(token_labels: torch.Tensor) -> torch.Tensor:
    """B×N×N uint8 target from B×h×w token labels: 1 same label, 0 different, 255 ignored pair or diagonal."""
    flat = token_labels.flatten(1).long()
    same = (flat[:, :, None] == flat[:, None, :]).to(torch.uint8)
    ignored = flat == IGNORE_INDEX
    invalid = ignored[:, :, None] | ignored[:, None, :]
    invalid |= torch.eye(flat.shape[1], dtype=torch.bool, device=flat.device)[None]
    return same.masked_fill(invalid, IGNORE_INDEX)


def ptc_loss(features: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """Patch token contrast (ToCo) over the whole batch.

    ``features`` B×D×h×w final tokens, ``token_labels`` B×h×w (0 bg, 1..C, 255 ignore).
    Positive and negative pair sums and counts are pooled over the batch, as the release does.
    """
    with _fp32(features.device):
        tokens = F.normalize(features.float().flatten(2), p=2, dim=1, eps=1e-8)  # B×D×N
        similarity = torch.bmm(tokens.transpose(1, 2), tokens).abs()  # B×N×N
        affinity = token_affinity(token_labels)
        positive = (affinity == 1).float()
        negative = (affinity == 0).float()
        pos_term = 1.0 - (similarity * positive).sum() / (positive.sum() + 1.0)
        neg_term = (similarity * negative).sum() / (negative.sum() + 1.0)
        return 0.5 * pos_term + 0.5 * neg_term


def _spatial_cosine(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Cosine per (image, channel) along the spatial axis, B×D."""
    return F.cosine_similarity(fixed.flatten(2), moving.flatten(2), dim=-1, eps=1e-6)


def discrepancy_terms(f1: torch.Tensor, f2: torch.Tensor, *, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(term with gradient to student 2, term with gradient to student 1).

    release: ``1 + mean cos(sg(F_a), F_b)`` with the cosine per channel over spatial positions.
    paper: ``-log(1 - cos(sg(f_a), f_b))`` on each image's flattened map, averaged over images.
    """
    with _fp32(f1.device):
        f1, f2 = f1.float(), f2.float()
        if form == "release":
            to_2 = 1.0 + _spatial_cosine(f1.detach(), f2).mean()
            to_1 = 1.0 + _spatial_cosine(f2.detach(), f1).mean()
        elif form == "paper":

            def log_term(fixed, moving):
                cos = F.cosine_similarity(fixed.flatten(1), moving.flatten(1), dim=1, eps=1e-6)
                return -torch.log((1.0 - cos).clamp_min(1e-6)).mean()

            to_2 = log_term(f1.detach(), f2)
            to_1 = log_term(f2.detach(), f1)
        else:
            raise ValueError(f"unknown discrepancy form {form!r} (release, paper)")
        return to_2, to_1


def pixel_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel CE (B×H×W, float32) of logits upsampled to the label size; 0 on ignored pixels."""
    with _fp32(logits.device):
        up = upsample(logits, tuple(labels.shape[-2:]))
        return F.cross_entropy(up, labels.long(), ignore_index=IGNORE_INDEX, reduction="none")


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Background/foreground balanced CE; finite when either part is empty."""
    labels = labels.long()
    ce = pixel_ce(logits, labels)
    background = labels == 0
    foreground = (labels != 0) & (labels != IGNORE_INDEX)
    bg = (ce * background).sum() / (background.sum() + 1e-6)
    fg = (ce * foreground).sum() / (foreground.sum() + 1e-6)
    return 0.5 * (bg + fg)


def consistency_loss(strong_logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of CE(strong logits, weak argmax) over the mask divided by its size (0 when empty).

    ``strong_logits`` must already be flipped back; they are upsampled to the target size here.
    """
    target = torch.where(mask, target.long(), torch.full_like(target.long(), IGNORE_INDEX))
    ce = pixel_ce(strong_logits, target)
    return (ce * mask).sum() / mask.sum().clamp_min(1)


def consistency_target(weak_logits: torch.Tensor, discarded: torch.Tensor, *, confidence: float):
    """(target, mask, confident): weak argmax, discarded ∧ (max softmax > confidence), and the
    confidence test alone.

    ``discarded`` B×H×W bool: pixels whose training label is 255 (optionally inside the crop box).
    """
    with _fp32(weak_logits.device):
        up = upsample(weak_logits.detach(), tuple(discarded.shape[-2:]))
        prob = up.softmax(dim=1)
        conf, target = prob.max(dim=1)
        confident = conf > confidence
        return target, discarded & confident, confident
