"""Carry a label map from one weak view of an image into another (the paper's Table 6 "Diff. Aug").

Each weak view records its affine from the original image into its crop
(``data.transforms.ViewSample``): ``[sy, oy, sx, ox]``, view = (sy·y + oy, sx·x + ox) in continuous
coordinates where pixel i spans [i, i + 1); sx < 0 for a flipped view. Two views of one image differ by
a rescale, a flip and a shift per axis, so the map between them is separable: each target row reads one
source row and each target column one source column (nearest neighbour at the pixel centre).
"""

from __future__ import annotations

import torch

from dupl_cli.core.labels import IGNORE_INDEX


def _source_index(n: int, src_scale, src_offset, dst_scale, dst_offset) -> torch.Tensor:
    """B×n: the source pixel holding the centre of each of the n target pixels along one axis."""
    centre = torch.arange(n, device=src_scale.device, dtype=torch.float32) + 0.5
    original = (centre - dst_offset[:, None]) / dst_scale[:, None]
    return torch.floor(src_scale[:, None] * original + src_offset[:, None]).long()


def _within(index: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """B×n: index in [lo, hi) of each image's span (B×2)."""
    return (index >= span[:, :1]) & (index < span[:, 1:])


def warp_labels(
    labels: torch.Tensor,
    src_affine: torch.Tensor,
    src_box: torch.Tensor,
    dst_affine: torch.Tensor,
    *,
    fill: int = IGNORE_INDEX,
) -> torch.Tensor:
    """B×H×W labels of the source views -> the same images' labels in the target views (B×H×W).

    ``*_affine``: B×4 ``[sy, oy, sx, ox]`` per view; ``src_box``: B×4 ``[y0, y1, x0, x1]``, the real
    image inside each source crop. A target pixel is ``fill`` where its centre falls outside the source
    box: outside the source's real image (its padding, or the part its crop cut off). The target's own
    padding shows no part of the image, so it lands outside the source image too. Both views share the
    label map's grid (the crop, padded at the bottom/right alike).
    """
    b, h, w = labels.shape
    src_affine, dst_affine = src_affine.float(), dst_affine.float()
    iy = _source_index(h, src_affine[:, 0], src_affine[:, 1], dst_affine[:, 0], dst_affine[:, 1])
    ix = _source_index(w, src_affine[:, 2], src_affine[:, 3], dst_affine[:, 2], dst_affine[:, 3])
    keep_y, keep_x = _within(iy, src_box[:, 0:2]), _within(ix, src_box[:, 2:4])
    index = torch.arange(b, device=labels.device)[:, None, None]
    out = labels[index, iy.clamp(0, h - 1)[:, :, None], ix.clamp(0, w - 1)[:, None, :]]
    return out.masked_fill(~(keep_y[:, :, None] & keep_x[:, None, :]), fill)
