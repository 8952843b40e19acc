"""A training image grid for trackers: image | CAM | pseudo-label | prediction, side by side."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dupl_cli.core.labels import IGNORE_INDEX


def colorize(labels: torch.Tensor, palette) -> np.ndarray:
    """H×W ids (255 = ignore, shown white) → H×W×3 uint8."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[IGNORE_INDEX] = 255
    return table[labels.detach().cpu().clamp(0, 255).numpy().astype(np.uint8)]


def heat(cam: torch.Tensor) -> np.ndarray:
    """H×W values in [0, 1] → a red-yellow heat map."""
    v = cam.detach().float().cpu().clamp(0, 1).numpy()
    return (np.stack([np.ones_like(v), v, np.zeros_like(v)], -1) * (v[..., None] ** 0.5) * 255).astype(
        np.uint8
    )


def _image_panel(image: torch.Tensor) -> np.ndarray:
    """3×H×W uint8, or float in [0, 1], → H×W×3 uint8."""
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).numpy()


def training_grid(visuals: dict[str, torch.Tensor], palette) -> np.ndarray | None:
    """Panels from ``visuals`` (``image`` 3×H×W, uint8 as the training step gives it or float in
    [0, 1]; ``cam`` H×W; ``pseudo_label`` and ``prediction`` H×W ids); missing panels are left out.
    Returns H×W'×3 uint8 or None."""
    image = visuals.get("image")
    if image is None:
        return None
    size = image.shape[-2:]
    panels = [_image_panel(image)]
    if "cam" in visuals:
        cam = F.interpolate(
            visuals["cam"].float()[None, None], size=size, mode="bilinear", align_corners=False
        )[0, 0]
        panels.append(heat(cam))
    for key in ("pseudo_label", "prediction"):
        if key in visuals:
            label = F.interpolate(visuals[key].float()[None, None], size=size, mode="nearest")[0, 0].long()
            panels.append(colorize(label, palette))
    return np.concatenate(panels, axis=1)
