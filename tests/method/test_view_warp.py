"""Labels carried between two real weak views of one image (Table 6 "Diff. Aug"), against the content.

The original image is a coordinate ramp: channel 0 holds 6·y + 3, channel 1 holds 6·x + 3 (channel 2
marks real pixels), so every view pixel tells which original coordinate it shows, independently of the
affine under test. The views come from the real ``WeakView.geometry`` (bilinear antialiased resize,
flip, zero-padded or cutting crop). Measured on 200 pairs: a view pixel's ramp reads its centre's
original coordinate within 0.26 px (quantisation and the resize's border); nearest-neighbour warping adds
at most half a source pixel, 0.5 / |s_a| original pixels, so the bound checked is 0.5 / |s_a| + 0.3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dupl_cli.config.schema import DataSettings
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.transforms import WeakView
from dupl_cli.method.view_warp import warp_labels

K, C0, S = 6, 3, 48  # ramp step and offset (values stay below 255), crop size
CONTENT = 0.3  # original pixels: how far a view pixel's ramp may be from its centre's coordinate
PAIRS = 60


def _view():
    data = DataSettings(
        crop_size=S, scale_range=(0.5, 2.0), color_jitter_p=0, grayscale_p=0, blur_radius=(0.0, 0.0)
    )
    return WeakView(data)


def _ramp(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([K * yy + C0, K * xx + C0, torch.full_like(yy, 255)]).to(torch.uint8)


@pytest.fixture(scope="module")
def pairs():
    """Two views of each of PAIRS ramps (sizes 12-39 px), each view from its own seed, stacked."""
    view, a, b = _view(), [], []
    for seed in range(PAIRS):
        rng = np.random.default_rng(seed)
        image = _ramp(int(rng.integers(12, 40)), int(rng.integers(12, 40)))
        a.append(view.geometry(image, torch.Generator().manual_seed(2 * seed)))
        b.append(view.geometry(image, torch.Generator().manual_seed(2 * seed + 1)))
    return tuple(tuple(torch.stack(parts) for parts in zip(*views, strict=True)) for views in (a, b))


def _coordinates(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Original (y, x) each pixel shows, read from the ramp."""
    return (crops[:, 0].float() - C0) / K, (crops[:, 1].float() - C0) / K


def _inside(box: torch.Tensor) -> torch.Tensor:
    r = torch.arange(S)
    ys = (r[None] >= box[:, :1]) & (r[None] < box[:, 1:2])
    xs = (r[None] >= box[:, 2:3]) & (r[None] < box[:, 3:])
    return ys[:, :, None] & xs[:, None, :]


def test_the_pairs_cover_flips_rescales_and_both_kinds_of_crop(pairs):
    (_, box_a, aff_a), _ = pairs
    assert (aff_a[:, 2] < 0).any() and (aff_a[:, 2] > 0).any()  # flipped and not
    assert (aff_a[:, 0] > 1.2).any() and (aff_a[:, 0] < 0.8).any()  # upscaled and downscaled
    padded = (box_a[:, 1] - box_a[:, 0] < S) | (box_a[:, 3] - box_a[:, 2] < S)
    assert padded.any() and (~padded).any()  # zero-padded crops and crops inside the image
    assert (aff_a[:, 1] < 0).any()  # crops that cut the image off at the top


def test_the_affine_is_where_the_view_shows_each_original_pixel(pairs):
    for crops, box, affine in pairs:
        y, x = _coordinates(crops)
        centre = torch.arange(S) + 0.5  # the inverse affine of each pixel centre, in pixel-index units
        oy = (centre[None] - affine[:, 1:2]) / affine[:, 0:1] - 0.5
        ox = (centre[None] - affine[:, 3:4]) / affine[:, 2:3] - 0.5
        inside = _inside(box)
        assert ((y - oy[:, :, None]).abs()[inside]).max() <= CONTENT
        assert ((x - ox[:, None, :]).abs()[inside]).max() <= CONTENT


def test_warped_labels_show_what_the_target_view_shows_and_ignore_the_rest(pairs):
    (crops_a, box_a, aff_a), (crops_b, box_b, aff_b) = pairs
    warped = [warp_labels(crops_a[:, c].long(), aff_a, box_a, aff_b) for c in (0, 1)]
    labelled = warped[0] != IGNORE_INDEX
    assert torch.equal(labelled, warped[1] != IGNORE_INDEX)
    assert not labelled[~_inside(box_b)].any()  # the target's own padding: always ignored
    yb, xb = _coordinates(crops_b)
    ya, xa = ((w.float() - C0) / K for w in warped)
    tol_y = (0.5 / aff_a[:, 0].abs() + CONTENT)[:, None, None].expand_as(ya)
    tol_x = (0.5 / aff_a[:, 2].abs() + CONTENT)[:, None, None].expand_as(xa)
    assert ((ya - yb).abs() <= tol_y)[labelled].all()
    assert ((xa - xb).abs() <= tol_x)[labelled].all()
    # The overlap, from the content alone: how far each target pixel's original coordinate lies
    # outside the span of coordinates view A shows (negative inside it).
    real_a = _inside(box_a)
    ya_all, xa_all = _coordinates(crops_a)
    span = [
        (v.masked_fill(~real_a, 1e9).amin((1, 2)), v.masked_fill(~real_a, -1e9).amax((1, 2)))
        for v in (ya_all, xa_all)
    ]
    out_y = torch.maximum(span[0][0][:, None, None] - yb, yb - span[0][1][:, None, None]) - tol_y
    out_x = torch.maximum(span[1][0][:, None, None] - xb, xb - span[1][1][:, None, None]) - tol_x
    inside_b = _inside(box_b)
    assert not labelled[inside_b & ((out_y > 0) | (out_x > 0))].any()  # clearly outside: ignored
    clearly_in = inside_b & (out_y < -2 * tol_y) & (out_x < -2 * tol_x)
    assert clearly_in.sum() > 1000 and labelled[clearly_in].all()  # clearly inside: labelled
    assert (inside_b & ~labelled).any()  # some pairs overlap only in part


def test_a_view_warped_into_itself_is_unchanged_inside_its_box(pairs):
    (crops, box, affine), _ = pairs
    labels = crops[:, 0].long()
    same = warp_labels(labels, affine, box, affine)
    inside = _inside(box)
    assert torch.equal(same[inside], labels[inside]) and (same[~inside] == IGNORE_INDEX).all()
