"""The second stage: a fully supervised segmenter trained on DuPL's pseudo-labels (docs/method.md §12).

Plain tensor functions over a frozen :class:`Stage2Config`, like the rest of the method:

* :func:`stage2_loss`: per-pixel cross-entropy of the logits (upsampled bilinearly to the label, as in
  §2) against the pseudo-label; pixels labelled 255 (the uncertain band) take no part. With pixel
  ``weights`` (the pseudo-label's confidence, ``method.stage2_weights = "confidence"``) each pixel's
  term is scaled by its weight and the sum divided by the sum of the weights.
* :func:`filter_noise`: the adaptive noise filter of stage 1 (§6, ``method.noise_filter.noisy_pixels``
  with the same parameters) applied online: per image, the detached loss of each labelled pixel is
  fitted with two Gaussians and the pixels of the high-loss component become 255 before the loss
  (``method.stage2_anf``, from ``method.stage2_anf_start``).
* :func:`stage2_step`: one iteration up to the loss; the trainer does backward and the optimiser step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method.losses import _fp32, pixel_ce
from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.params import IMAGENET_MEAN, IMAGENET_STD, NoiseFilterConfig
from dupl_cli.models.geometry import pad_to_multiple, padded_size, resample_view

WEIGHTINGS = ("none", "confidence")


@dataclass(frozen=True)
class Stage2Config:
    """What one stage-2 step needs besides the model, the batch and the iteration."""

    weights: str = "none"  # none | confidence
    anf: bool = False
    anf_start: int = 0
    noise: NoiseFilterConfig = field(default_factory=NoiseFilterConfig)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation of the batch's images (visuals)
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTINGS:
            raise ValueError(f"stage-2 weights must be one of {', '.join(WEIGHTINGS)}, not {self.weights!r}")


class Stage2Result(NamedTuple):
    """Shaped like ``method.step.StepResult``, so the training loop logs both alike."""

    loss: torch.Tensor  # scalar, float32, with graph
    terms: dict[str, torch.Tensor]  # detached scalars: seg
    stats: dict[str, torch.Tensor]  # detached scalars: noise_share, uncertain_share
    visuals: dict[str, torch.Tensor]  # first image: image (uint8 3×H×W), pseudo_label, prediction (H×W)
    counts: dict[str, torch.Tensor] | None = None  # no label-quality counts: its labels are fixed


def stage2_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels of ``labels`` (B×H×W; 255 ignored).

    ``logits`` B×K×h×w are upsampled to the label size first. ``weights`` (B×H×W in [0, 1]) scale each
    pixel's term; the mean is then over the weights. Finite (0) when no pixel is labelled.
    """
    ce = pixel_ce(logits, labels)  # 0 on ignored pixels, float32
    with _fp32(ce.device):
        valid = (labels != IGNORE_INDEX).float()
        w = valid if weights is None else valid * weights.float()
        return (ce * w).sum() / w.sum().clamp_min(1e-6)


def filter_noise(
    logits: torch.Tensor, labels: torch.Tensor, noise: NoiseFilterConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels with noisy pixels set to 255, noise mask B×H×W) by stage 1's adaptive noise filter."""
    loss = pixel_ce(logits.detach(), labels)
    mask = noisy_pixels(loss, labels, noise)
    return labels.masked_fill(mask, IGNORE_INDEX), mask


def label_confidence(
    scores: torch.Tensor, label: torch.Tensor, kind: str, image_labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The confidence (H×W in [0, 1]) of each pixel's ``label`` (H×W; 255: 0) under the scores it came from.

    ``kind = "seg"``: ``scores`` are logits K×H×W; the softmax probability of the label's class.
    ``kind = "cam"``: ``scores`` are normalised CAMs C×H×W in [0, 1] and ``image_labels`` (C) the image's
    labels; a class label's confidence is its CAM, background's is 1 - the largest CAM of a present class.
    After a CRF the label may not be the scores' argmax: its confidence is then low.
    """
    label = label.to(scores.device).long()
    index = label.clamp(max=scores.shape[0] if kind == "cam" else scores.shape[0] - 1)
    if kind == "seg":
        conf = scores.float().softmax(0).gather(0, index[None])[0]
    elif kind == "cam":
        present = torch.as_tensor(image_labels, device=scores.device).float().view(-1, 1, 1) > 0
        cams = scores.float().clamp(0, 1) * present
        background = 1 - cams.amax(0)
        conf = torch.cat([background[None], cams]).gather(0, index[None])[0]
    else:
        raise ValueError(f"unknown score kind {kind!r} (seg, cam)")
    return conf.masked_fill(label == IGNORE_INDEX, 0.0)


def pixel_logits(model: torch.nn.Module, images: torch.Tensor, stride: int) -> torch.Tensor:
    """The segmenter's logits on ``images`` (B×3×H×W) resampled onto their H×W pixels, float32."""
    size = tuple(images.shape[-2:])
    raw = model(pad_to_multiple(images, stride))
    return resample_view(raw.float(), size, view=size, padded=padded_size(size, stride))


def stage2_step(
    model: torch.nn.Module, batch: dict[str, Any], step: int, config: Stage2Config
) -> Stage2Result:
    """One stage-2 iteration: logits, the optional online noise filter, the (weighted) loss.

    ``model`` is the segmenter (``models.segmenter.Segmenter``); ``batch`` holds ``image`` (B×3×S×S,
    normalised), ``mask`` (B×S×S pseudo-labels, 255 uncertain) and, with confidence weights,
    ``confidence`` (B×S×S in [0, 1]).
    """
    images, labels = batch["image"], batch["mask"].long()
    stride = int(getattr(model.backbone, "stride", 1) or 1)
    logits = pixel_logits(model, images, stride)
    noise = None
    if config.anf and step >= config.anf_start:
        labels, noise = filter_noise(logits, labels, config.noise)
    weights = batch["confidence"] if config.weights == "confidence" else None
    loss = stage2_loss(logits, labels, weights)
    stats = _stats(batch["mask"], noise)
    return Stage2Result(loss, {"seg": loss.detach()}, stats, _visuals(images, labels, logits, config))


def _stats(pseudo: torch.Tensor, noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Share of the pseudo-label's pixels that are uncertain, and of its foreground judged noise."""
    foreground = (pseudo != 0) & (pseudo != IGNORE_INDEX)
    noise_share = torch.zeros((), device=pseudo.device)
    if noise is not None:
        noise_share = (noise & foreground).sum().float() / foreground.sum().clamp_min(1).float()
    return {"noise_share": noise_share, "uncertain_share": (pseudo == IGNORE_INDEX).float().mean()}


@torch.no_grad()
def _visuals(images, labels, logits, config: Stage2Config) -> dict[str, torch.Tensor]:
    mean = torch.tensor(config.mean, device=images.device).view(3, 1, 1)
    std = torch.tensor(config.std, device=images.device).view(3, 1, 1)
    image = (images[0].float() * std + mean).clamp(0, 1)
    return {"image": image, "pseudo_label": labels[0], "prediction": logits[0].argmax(0)}
