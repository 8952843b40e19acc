"""Test-time augmentation shared by evaluate, infer and pseudo-label (docs/method.md §11).

Each scale is one forward of the batch concatenated with its horizontal flip; logits of every
view are upsampled to the image size, flips merged (sum|max), then scales merged (max|sum).
VOC release: native size, scales (1.0, 1.25, 1.5), flip merged by sum, scales by max.
COCO release: resize to 448 first, scales merged by sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dupl_cli.models.geometry import pad_to_multiple

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TTAConfig:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    flip_merge: Literal["sum", "max"] = "sum"
    scale_merge: Literal["max", "sum"] = "max"
    resize: int = 0  # square side the image is resized to before TTA; 0 = native resolution
    bf16: bool = True  # autocast to bf16 on CUDA (ignored on CPU)

    @classmethod
    def from_settings(cls, eval_settings, *, multiscale: bool) -> TTAConfig:
        """``multiscale`` on: the configured scales and flip; off: one native (or resized) view."""
        return cls(
            scales=tuple(eval_settings.scales) if multiscale else (1.0,),
            flip=bool(eval_settings.flip) if multiscale else False,
            flip_merge=eval_settings.flip_merge,
            scale_merge=eval_settings.scale_merge,
            resize=eval_settings.resize,
        )

    def describe(self) -> str:
        size = f"resize {self.resize}x{self.resize}" if self.resize else "native size"
        flip = f"flip merged by {self.flip_merge}" if self.flip else "no flip"
        scales = ", ".join(f"{s:g}" for s in self.scales)
        merge = f", scales merged by {self.scale_merge}" if len(self.scales) > 1 else ""
        return f"{size}, scales ({scales}){merge}, {flip}"


def _merge(acc: torch.Tensor | None, new: torch.Tensor, rule: str) -> torch.Tensor:
    if acc is None:
        return new
    return torch.maximum(acc, new) if rule == "max" else acc + new


def scaled_size(size: tuple[int, int], scale: float, multiple: int = 1) -> tuple[int, int]:
    """``int(scale * side)`` per side (the release's rounding), at least one ``multiple``."""
    return tuple(max(multiple, int(scale * s)) for s in size)  # type: ignore[return-value]


def padded_forward(logits_fn: LogitsFn, view: torch.Tensor, multiple: int) -> torch.Tensor:
    """Run ``logits_fn`` on ``view`` zero-padded (right, bottom) to a multiple of ``multiple``.

    Patch backbones need sides divisible by their stride; zero in normalised space is the mean
    colour. Returns logits upsampled to the padded size and cropped back to the view's size.
    """
    h, w = view.shape[-2:]
    padded = pad_to_multiple(view, multiple)
    if padded is view:
        return logits_fn(view)
    logits = logits_fn(padded)
    logits = F.interpolate(logits.float(), size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :h, :w]


@torch.no_grad()
def tta_logits(
    logits_fn: LogitsFn,
    images: torch.Tensor,
    cfg: TTAConfig,
    out_size: tuple[int, int] | None = None,
    multiple: int = 1,
) -> torch.Tensor:
    """Merged float32 logits B×K×H×W at ``out_size`` (default: the images' own size).

    ``images``: normalised B×3×H×W. ``logits_fn`` maps a batch to B×K×h×w logits at any resolution
    (e.g. ``Student.segment`` or an ensemble); views are zero-padded to a multiple of ``multiple``
    (the backbone stride) when needed. Views of equal size share one forward.
    """
    out_size = tuple(out_size or images.shape[-2:])
    base = images
    if cfg.resize:
        base = F.interpolate(images, size=(cfg.resize, cfg.resize), mode="bilinear", align_corners=False)
    base_size = tuple(base.shape[-2:])
    # Scales that round to the same size are the same view: forward them once.
    by_size: dict[tuple[int, int], list[float]] = {}
    for s in cfg.scales:
        by_size.setdefault(scaled_size(base_size, s), []).append(s)
    use_autocast = cfg.bf16 and images.is_cuda
    batch = images.shape[0]
    merged = None
    for size, members in by_size.items():
        view = (
            base
            if size == base_size
            else F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        )
        if cfg.flip:
            view = torch.cat([view, view.flip(-1)], 0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            logits = padded_forward(logits_fn, view, multiple)
        logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
        if cfg.flip:
            logits = _merge(logits[:batch], logits[batch:].flip(-1), cfg.flip_merge)
        for _ in members:
            merged = _merge(merged, logits, cfg.scale_merge)
    return merged


def stride_of(model) -> int:
    """Side multiple a DualStudent's backbones need (their output stride)."""
    return int(getattr(model.students[0].backbone, "stride", 1) or 1)


def ensemble(fns: Sequence[LogitsFn]) -> LogitsFn:
    """Mean of several models' logits (both students for ``--student ensemble``)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([fn(x).float() for fn in fns]).mean(0)

    return run
