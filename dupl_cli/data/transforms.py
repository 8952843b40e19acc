"""The weak view of docs/method.md §9, with every random draw taken from an explicit generator.

rescale U(scale_range) -> hflip p .5 -> random crop (zero padding when smaller; ``img_box`` =
[y0, y1, x0, x1] of the real image inside the crop) -> ColorJitter p .8 -> RandomGrayscale p .2
-> GaussianBlur radius U(blur_radius) -> normalise. The ops are torchvision v2 functionals; the
parameters are drawn here so a (seed, sample) pair always gives the same view, whatever the
worker count. Each view also records its ``affine``, the map from the original image into the crop
(used to carry labels between two views of one image: ``method.view_warp``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from dupl_cli.data.blur import gaussian_blur


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 -> uint8 3×H×W (no copy of the pixels beyond making them contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """float [0,1] 3×H×W or B×3×H×W -> ImageNet-normalised."""
    return F.normalize(x, list(mean), list(std))


class ViewSample(NamedTuple):
    image: torch.Tensor  # normalised float 3×S×S
    img_box: torch.Tensor  # int64 [y0, y1, x0, x1]: the real image inside the crop
    affine: torch.Tensor  # float32 [sy, oy, sx, ox]: original (y, x) -> crop (sy·y + oy, sx·x + ox)


class Geometry(NamedTuple):
    """One view's geometry: the original size, the rescaled size, the flip and the paste/crop offsets."""

    h: int
    w: int
    nh: int
    nw: int
    flipped: bool
    py: int
    px: int
    cy: int
    cx: int


class WeakView:
    def __init__(self, data_settings):
        self.crop = data_settings.crop_size
        self.scale_range = tuple(data_settings.scale_range)
        self.hflip = data_settings.hflip
        self.jitter = tuple(data_settings.color_jitter)
        self.jitter_p = data_settings.color_jitter_p
        self.grayscale_p = data_settings.grayscale_p
        self.blur = tuple(data_settings.blur_radius)
        self.mean, self.std = tuple(data_settings.mean), tuple(data_settings.std)

    def draw_geometry(self, h: int, w: int, gen: torch.Generator) -> Geometry:
        """The random rescale, flip and crop placement of an H×W image, drawn from ``gen``."""
        ratio = _uniform(gen, *self.scale_range)
        nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
        flipped = self.hflip and float(torch.rand((), generator=gen)) < 0.5
        s = self.crop
        # zero canvas of at least S×S; the image sits at a random place in it when smaller
        ch, cw = max(s, nh), max(s, nw)
        py = int(torch.randint(0, ch - nh + 1, (), generator=gen))
        px = int(torch.randint(0, cw - nw + 1, (), generator=gen))
        cy = int(torch.randint(0, ch - s + 1, (), generator=gen))
        cx = int(torch.randint(0, cw - s + 1, (), generator=gen))
        return Geometry(h, w, nh, nw, flipped, py, px, cy, cx)

    def apply_geometry(self, image: torch.Tensor, g: Geometry, *, fill: int = 0, nearest: bool = False):
        """Rescale (bilinear with antialiasing, or ``nearest`` for label maps), flip and crop a uint8
        K×H×W map by ``g`` -> (uint8 K×S×S, img_box int64 [y0, y1, x0, x1], affine float32
        [sy, oy, sx, ox]); the crop outside the image is ``fill``.

        The affine maps continuous original coordinates (pixel i spans [i, i + 1)) to crop
        coordinates: the resize scales by (nh/h, nw/w) (the bilinear resize's own pixel-centre
        convention), a flip negates x about the resized width, the paste and crop offsets shift.
        """
        h, w, nh, nw, flipped, py, px, cy, cx = g
        if (nh, nw) != (h, w):
            mode = F.InterpolationMode.NEAREST if nearest else F.InterpolationMode.BILINEAR
            image = F.resize(image, [nh, nw], interpolation=mode, antialias=not nearest)
        if flipped:
            image = F.horizontal_flip(image)
        s = self.crop
        out = torch.full((image.shape[0], s, s), fill, dtype=image.dtype)
        y0, y1 = max(py - cy, 0), min(py + nh - cy, s)
        x0, x1 = max(px - cx, 0), min(px + nw - cx, s)
        out[:, y0:y1, x0:x1] = image[:, y0 + cy - py : y1 + cy - py, x0 + cx - px : x1 + cx - px]
        sx, ox = (-nw / w, nw + px - cx) if flipped else (nw / w, px - cx)
        affine = torch.tensor([nh / h, py - cy, sx, ox], dtype=torch.float32)
        return out, torch.tensor([y0, y1, x0, x1], dtype=torch.int64), affine

    def geometry(
        self, image: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rescale, flip and crop a uint8 3×H×W image -> (uint8 3×S×S, img_box int64 [y0, y1, x0, x1],
        affine float32 [sy, oy, sx, ox]) (:meth:`apply_geometry` of :meth:`draw_geometry`)."""
        return self.apply_geometry(image, self.draw_geometry(image.shape[1], image.shape[2], gen))

    def photometric(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """ColorJitter (random order, p), RandomGrayscale, GaussianBlur on float [0,1] 3×S×S."""
        b, c, s, hue = self.jitter
        if float(torch.rand((), generator=gen)) < self.jitter_p:
            for op in torch.randperm(4, generator=gen).tolist():
                if op == 0 and b > 0:
                    x = F.adjust_brightness(x, _uniform(gen, max(0.0, 1 - b), 1 + b))
                elif op == 1 and c > 0:
                    x = F.adjust_contrast(x, _uniform(gen, max(0.0, 1 - c), 1 + c))
                elif op == 2 and s > 0:
                    x = F.adjust_saturation(x, _uniform(gen, max(0.0, 1 - s), 1 + s))
                elif op == 3 and hue > 0:
                    x = F.adjust_hue(x, _uniform(gen, -hue, hue))
        if float(torch.rand((), generator=gen)) < self.grayscale_p:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if self.blur[1] > 0:
            sigma = _uniform(gen, *self.blur)  # PIL's blur radius is the Gaussian's sigma
            if sigma > 0:
                x = gaussian_blur(x, sigma)  # torchvision's kernel, applied separably
        return x

    def sample(self, image: np.ndarray, gen: torch.Generator) -> ViewSample:
        return self.sample_with_maps(image, gen)[0]

    def sample_with_maps(
        self, image: np.ndarray, gen: torch.Generator, *maps: tuple[np.ndarray, int]
    ) -> tuple[ViewSample, list[torch.Tensor]]:
        """The view of ``image`` and each (H×W uint8 map, fill) of ``maps`` carried through its
        geometry with nearest resampling -> S×S, the fill outside the image. The maps draw nothing:
        the view is the one :meth:`sample` gives."""
        pixels = to_tensor(image)
        geometry = self.draw_geometry(pixels.shape[1], pixels.shape[2], gen)
        crop, box, affine = self.apply_geometry(pixels, geometry)
        carried = [
            self.apply_geometry(
                torch.from_numpy(np.ascontiguousarray(m))[None], geometry, fill=fill, nearest=True
            )[0][0]
            for m, fill in maps
        ]
        x = self.photometric(crop.float().div_(255.0), gen).clamp_(0, 1)
        return ViewSample(normalize(x, self.mean, self.std), box, affine), carried

    def __call__(self, image: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised view, img_box)."""
        return self.sample(image, gen)[:2]
