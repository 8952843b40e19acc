"""Sliding-window segmentation for big images (``eval.mode`` slide, or auto above ``eval.slide_above``).

As mmseg's slide mode: windows of ``eval.slide_crop`` pixels every ``eval.slide_stride`` pixels, the last
row and column flush with the image's far edges; each window's logits are summed into an accumulator with
a count map (how many windows cover each pixel) and divided at the end. TTA runs inside every window
(its scales and flip, merged by ``eval.flip_merge`` / ``eval.scale_merge``), so the model never sees more
than a window times the largest scale, and windows go through the model ``eval.batch_size`` at a time.

Memory: the image stays uint8 on the host and each window is normalised on its own; the accumulator
holds one band of window rows (K × crop × W float32). Rows no later window covers are divided by their
count, turned into labels and dropped, so working memory grows with the image's width, not its area;
the whole image's logits are kept only when something reads them (``--probs``, the CRF, a report).
The count map is the outer product of the row and column coverages: windows form a grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from dupl_cli.core.errors import UserError
from dupl_cli.predict.loop import labels_of
from dupl_cli.predict.tta import LogitsFn, TTAConfig, tta_logits

Mode = Literal["whole", "slide", "auto"]


@dataclass(frozen=True)
class SlideConfig:
    mode: Mode = "whole"
    crop: int = 448  # window side (pixels)
    stride: int = 0  # step between windows; 0 = two thirds of the window
    above: int = 4_000_000  # auto slides over images with more pixels than this

    @classmethod
    def from_settings(cls, eval_settings, crop_size: int) -> SlideConfig:
        """``eval.mode``, ``eval.slide_crop`` (0 = ``crop_size``, the training crop), ``eval.slide_stride``
        and ``eval.slide_above``."""
        crop, stride = int(eval_settings.slide_crop or crop_size), int(eval_settings.slide_stride)
        if stride > crop:
            raise UserError(
                f"eval.slide_stride = {stride} is above the window side {crop}: pixels between windows would "
                "have no prediction; use a stride up to eval.slide_crop"
            )
        return cls(eval_settings.mode, crop, stride, int(eval_settings.slide_above))

    @property
    def step(self) -> int:
        return self.stride or max(1, self.crop * 2 // 3)

    def applies(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` (H, W) is predicted window by window."""
        if self.mode == "auto":
            return size[0] * size[1] > self.above
        return self.mode == "slide"

    def describe(self) -> str:
        windows = f"{self.crop} px windows every {self.step} px"
        if self.mode == "auto":
            return f"whole image up to {self.above:,} pixels, above: {windows}"
        return windows if self.mode == "slide" else "whole image"


def window_starts(n: int, crop: int, stride: int) -> list[int]:
    """First pixel of each window along a side of ``n`` pixels (mmseg's placement: every ``stride``,
    the last one flush with the end; one window of ``n`` pixels when ``n <= crop``)."""
    grids = max(n - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, max(n - crop, 0)) for i in range(grids)]


def coverage(n: int, crop: int, stride: int) -> torch.Tensor:
    """How many windows cover each of ``n`` pixels along one side (int32)."""
    counts = torch.zeros(n, dtype=torch.int32)
    for start in window_starts(n, crop, stride):
        counts[start : start + crop] += 1
    return counts


def count_map(size: tuple[int, int], crop: int, stride: int) -> torch.Tensor:
    """Windows covering each pixel of an H×W image: the outer product of the two sides' coverages."""
    return coverage(size[0], crop, stride)[:, None] * coverage(size[1], crop, stride)[None, :]


class Band:
    """Logit sums of the rows ``[top, top + h)`` of one window row (``h`` its windows' height): the rows
    a window still to come may add to. Allocated once; released rows make room in place."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, device) -> None:
        self.rows, self.cols = rows.to(device), cols.to(device)  # coverages of the two sides
        self.top, self.sums = 0, None

    def add(self, y: int, x: int, logits: torch.Tensor) -> None:
        """Add one window's K×h×w logits at (``y``, ``x``); every window of a row has ``y == top``."""
        k, h, w = logits.shape
        if self.sums is None:
            self.sums = logits.new_zeros(k, h, self.cols.numel())
        self.sums[:, y - self.top : y - self.top + h, x : x + w] += logits

    def release(self, until: int) -> torch.Tensor:
        """Mean logits K×(until - top)×W of the rows before ``until`` (final: no window left covers them);
        the rows after them move up to make room for the next window row."""
        n = until - self.top
        counts = self.rows[self.top : until, None] * self.cols[None, :]
        mean = self.sums[:, :n] / counts
        rest = self.sums.shape[1] - n
        if rest > 0:
            after = self.sums[:, n:]
            self.sums[:, :rest] = after if n >= rest else after.clone()  # no overlap when n >= rest
        self.sums[:, max(rest, 0) :].zero_()
        self.top = until
        return mean


@dataclass(frozen=True)
class SlideResult:
    labels: torch.Tensor  # H×W uint8 on the device
    logits: torch.Tensor | None  # K×H×W float32 on the device, when kept


def _window_batch(pixels: torch.Tensor, y: int, xs: list[int], crop: tuple[int, int]) -> torch.Tensor:
    """uint8 windows B×h×w×3 of the host image at row ``y`` and columns ``xs``."""
    h, w = crop
    return torch.stack([pixels[y : y + h, x : x + w] for x in xs])


@torch.no_grad()
def slide_predict(
    logits_fn: LogitsFn,
    image: np.ndarray,
    tta: TTAConfig,
    slide: SlideConfig,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    *,
    multiple: int = 1,
    batch_size: int = 1,
    keep_logits: bool = False,
    advance: Callable[[int], None] | None = None,
) -> SlideResult:
    """Labels (and with ``keep_logits`` the mean logits) of a uint8 H×W×3 ``image``, window by window.

    ``normalise`` maps uint8 windows B×h×w×3 (host) to the model's B×3×h×w input on its device;
    ``advance(n)`` is called as windows finish.
    """
    height, width = image.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(image))
    crop, step = (min(slide.crop, height), min(slide.crop, width)), slide.step
    ys, xs = window_starts(height, slide.crop, step), window_starts(width, slide.crop, step)
    band = labels = logits = None
    for i, y in enumerate(ys):
        for at in range(0, len(xs), max(1, batch_size)):
            chunk = xs[at : at + max(1, batch_size)]
            out = tta_logits(
                logits_fn, normalise(_window_batch(pixels, y, chunk, crop)), tta, multiple=multiple
            )
            if band is None:
                band = Band(coverage(height, slide.crop, step), coverage(width, slide.crop, step), out.device)
                labels = torch.empty(height, width, dtype=torch.uint8, device=out.device)
                if keep_logits:
                    logits = out.new_empty(out.shape[1], height, width)
            for x, window in zip(chunk, out, strict=True):
                band.add(y, x, window)
            if advance is not None:
                advance(len(chunk))
        top, until = band.top, ys[i + 1] if i + 1 < len(ys) else height
        mean = band.release(until)
        labels[top:until] = labels_of(mean, 0)
        if logits is not None:
            logits[:, top:until] = mean
    return SlideResult(labels, logits)


def window_count(size: tuple[int, int], slide: SlideConfig) -> int:
    """Windows an image of ``size`` takes."""
    step = slide.step
    return len(window_starts(size[0], slide.crop, step)) * len(window_starts(size[1], slide.crop, step))
