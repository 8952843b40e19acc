"""How backbone maps sit on the input pixels, for inputs of any size.

A backbone of stride ``s`` sees its input zero-padded at the bottom and right to a multiple of ``s``
(zero is the mean colour after normalisation) and returns maps of ``ceil(H/s) x ceil(W/s)`` cells;
cell ``(i, j)`` covers the pixels ``[i*s, (i+1)*s) x [j*s, (j+1)*s)`` of the padded input. Upsampling
such a map straight to ``H x W`` would stretch the padding over the image; :func:`resample_view`
maps it back exactly (one bilinear resampling, ``align_corners=False``), and is the plain resize when
nothing was padded, so multiples of the stride give the same numbers as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``x`` (…×H×W) at the bottom and right so both sides are multiples of ``multiple``."""
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % multiple, (-w) % multiple
    # A traced graph must pad at every size, not only at the size it was traced at.
    if not _tracing() and not ph and not pw:
        return x
    return F.pad(x, (0, pw, 0, ph))


def padded_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``size`` rounded up to multiples of ``multiple`` (what :func:`pad_to_multiple` produces)."""
    return (-(-int(size[0]) // multiple) * multiple, -(-int(size[1]) // multiple) * multiple)


def resample_view(
    maps: torch.Tensor, size: tuple[int, int], *, view: tuple[int, int], padded: tuple[int, int]
) -> torch.Tensor:
    """Maps of an input padded from ``view`` to ``padded`` pixels, resampled onto ``size`` pixels.

    The maps cover the whole padded input (a cell is ``padded / h`` pixels); the view's content, its
    top-left ``view`` pixels, is stretched onto ``size``: output pixel ``y`` samples the view at
    ``(y + 0.5) * view / size - 0.5``. Bilinear, ``align_corners=False``, one resampling. With
    ``size == view`` this is "upsample to the padded size and crop"; with nothing padded, a plain resize.
    """
    h, w = maps.shape[-2], maps.shape[-1]
    size = (int(size[0]), int(size[1]))
    if tuple(padded) == tuple(view):
        if (h, w) == size:
            return maps
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    # output pixels per map cell
    scale = (size[0] * padded[0] / (view[0] * h), size[1] * padded[1] / (view[1] * w))
    up = F.interpolate(
        maps, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )
    if up.shape[-2] < size[0] or up.shape[-1] < size[1]:
        raise ValueError(f"maps of {h}x{w} on a {padded} input do not cover a {view} view")
    return up[..., : size[0], : size[1]]
