"""CAM -> pseudo-labels: dynamic threshold (DTA), three-way thresholding, token labels and
PAR-refined labels with the two thresholds combined (docs/method.md §4.2-4.5, §10)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method.par import pixel_affinity, propagate
from dupl_cli.method.params import ParConfig


def high_threshold(t: int, *, tau0: float, tau_end, t_start: int, t_end: int):
    """Cosine decay from tau0 to tau_end over [t_start, t_end]; tau_end a float or per-class tensor."""
    if t < t_start:
        factor = 0.0
    elif t >= t_end:
        factor = 1.0
    else:
        # (T' - 1) as in the release; a window of one or two iterations must not divide by zero.
        factor = min((1 - math.cos(math.pi * (t - t_start) / max(t_end - t_start - 1, 1))) / 2, 1.0)
    if isinstance(tau_end, torch.Tensor):
        return tau0 + (tau_end.float() - tau0) * factor
    return tau0 + (float(tau_end) - tau0) * factor


def image_thresholds(tau_class: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
    """Per-image tau_h (B): the max of the per-class thresholds over the image's present classes."""
    if not isinstance(tau_class, torch.Tensor):
        return torch.full((labels.shape[0],), float(tau_class), device=labels.device)
    tau = tau_class.to(labels.device).float().expand_as(labels)
    present = torch.where(labels > 0, tau, torch.full_like(tau, -math.inf)).amax(1)
    return torch.where(torch.isfinite(present), present, tau.amax(1))


def box_mask(
    img_box: torch.Tensor, size: tuple[int, int], *, stride: int = 1, pixel_coords: bool = False
) -> torch.Tensor:
    """B×h×w bool: cells inside ``img_box`` [y0, y1, x0, x1] (pixels).

    ``stride`` > 1 maps the box to a coarser grid (a cell is inside when its centre is);
    ``pixel_coords`` instead slices the grid with the pixel coordinates (release quirk, docs/method.md §10).
    """
    h, w = size
    box = img_box.to(torch.float64)
    ys = torch.arange(h, device=img_box.device, dtype=torch.float64)
    xs = torch.arange(w, device=img_box.device, dtype=torch.float64)
    if not pixel_coords and stride != 1:
        ys, xs = ys * stride + stride / 2, xs * stride + stride / 2
    inside_y = (ys >= box[:, 0:1]) & (ys < box[:, 1:2])
    inside_x = (xs >= box[:, 2:3]) & (xs < box[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def cam_to_label(
    cam,
    labels,
    *,
    tau_high,
    tau_low: float | None = None,
    img_box=None,
    ignore: int = IGNORE_INDEX,
    box_stride: int = 1,
    pixel_box: bool = False,
):
    """The CAM -> label rule: class argmax_c y_c·M_c where its score > tau_h, background where <= tau_l.

    ``tau_low`` given: three-way (pseudo-labels, docs/method.md §4.2), ignore in (tau_l, tau_h].
    ``None``: two-way (evaluation and validation, §11), background wherever the score is not above
    tau_h. ``tau_high`` a float or one value per image; ``labels`` may sit on another device.
    """
    b = cam.shape[0]
    valid = cam.float() * labels.to(cam.device).float()[:, :, None, None]
    value, index = valid.max(dim=1)
    tau_h = torch.as_tensor(tau_high, dtype=value.dtype, device=value.device).reshape(-1).expand(b)
    tau_h = tau_h.view(b, 1, 1)
    out = torch.where(value > tau_h, index + 1, torch.full_like(index, ignore))
    out = torch.where(value <= (tau_h if tau_low is None else tau_low), torch.zeros_like(out), out)
    if img_box is not None:
        inside = box_mask(img_box, out.shape[-2:], stride=box_stride, pixel_coords=pixel_box)
        out = torch.where(inside, out, torch.full_like(out, ignore))
    return out


def cam_on_grid(cam: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A normalised full-size CAM resized (bilinear) to the token grid, as PTC token labels see it."""
    return F.interpolate(cam.float(), size=grid, mode="bilinear", align_corners=False)


def token_labels(
    cam_aux,
    labels,
    *,
    grid,
    tau_high,
    tau_low: float,
    img_box=None,
    pixel_box: bool = False,
    ignore: int = IGNORE_INDEX,
):
    """PTC token labels: the normalised aux CAM resized to the token grid, then thresholded."""
    tok = cam_on_grid(cam_aux, grid)
    stride = cam_aux.shape[-2] // grid[0]
    return cam_to_label(
        tok,
        labels,
        tau_high=tau_high,
        tau_low=tau_low,
        img_box=img_box,
        ignore=ignore,
        box_stride=stride,
        pixel_box=pixel_box,
    )


def _present_slots(labels: torch.Tensor, slots: int | None = None):
    """Compact channel layout: slot 0 background, slots 1.. the present classes in order.

    ``slots``: class slots per image, at least the batch's largest present-class count, known on the
    host (the train loader counts it): reading it off an accelerator would sync. None: counted here
    on CPU (free), all C elsewhere. Returns (class index per slot B×(K-1), slot used B×(K-1) bool,
    label id per slot B×K).
    """
    present = labels > 0
    if slots is None:
        slots = int(present.sum(1).max()) if labels.device.type == "cpu" else labels.shape[1]
    k = min(max(int(slots), 1), labels.shape[1])
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :k]
    used = present.gather(1, order)
    ids = torch.cat([torch.zeros_like(order[:, :1]), order + 1], 1)
    return order, used, ids


def refine_labels(
    images01: torch.Tensor,
    cam: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau_high,
    tau_low: float,
    img_box=None,
    par: ParConfig = ParConfig(),
    ignore: int = IGNORE_INDEX,
    slots: int | None = None,
) -> torch.Tensor:
    """PAR-refined labels (docs/method.md §4.5), B×H×W: foreground from the tau_h pass, background where
    both the tau_h and tau_l passes say background, ignore elsewhere and outside ``img_box``.

    ``images01`` B×3×H×W in [0, 1] (the de-normalised weak view), ``cam`` normalised B×C×H×W.
    One affinity per image is shared by both passes; the present classes are packed into a
    fixed number of channels (absent slots masked out of the softmax) so the batch runs at once:
    ``slots`` of them (the batch's largest class count, known on the host; see ``_present_slots``).
    Absent classes get probability 0 either way, so the labels do not depend on ``slots``.
    """
    b, _, h, w = cam.shape
    small = (h // par.downscale, w // par.downscale)
    order, used, ids = _present_slots(labels, slots)
    cam = cam.float() * labels.float()[:, :, None, None]
    packed = cam.gather(1, order[:, :, None, None].expand(-1, -1, h, w))
    packed = F.interpolate(packed, size=small, mode="bilinear", align_corners=False)
    tau_h = torch.as_tensor(tau_high, dtype=packed.dtype, device=packed.device).reshape(-1).expand(b)
    blocked = ~used[:, :, None, None]

    def stack(bkg: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([bkg.view(b, 1, 1, 1).expand(b, 1, *small), packed], 1)
        logits[:, 1:] = logits[:, 1:].masked_fill(blocked, -math.inf)
        return logits.softmax(dim=1)

    probs = torch.cat([stack(tau_h), stack(torch.full_like(tau_h, tau_low))], 1)
    img_small = F.interpolate(images01.float(), size=small, mode="bilinear", align_corners=False)
    refined = propagate(pixel_affinity(img_small, par), probs, par)
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    k = ids.shape[1]
    label_h = ids.gather(1, refined[:, :k].argmax(1).flatten(1)).view(b, h, w)
    label_l = ids.gather(1, refined[:, k:].argmax(1).flatten(1)).view(b, h, w)
    out = torch.where(label_h == 0, torch.full_like(label_h, ignore), label_h)
    out = torch.where((label_h == 0) & (label_l == 0), torch.zeros_like(out), out)
    if img_box is not None:
        out = torch.where(box_mask(img_box, (h, w)), out, torch.full_like(out, ignore))
    return out
