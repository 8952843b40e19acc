"""PAR: batched implementation vs a straightforward per-image, per-pixel-neighbour loop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from method_oracles import refine

from dupl_cli.method.par import pixel_affinity, propagate
from dupl_cli.method.params import ParConfig


def _loop_par(image: torch.Tensor, probs: torch.Tensor, dilations, iters: int) -> torch.Tensor:
    """One image (3×H×W), written plainly: explicit index clamping, lists of neighbours, sum."""
    _, h, w = image.shape
    ys = torch.arange(h).view(h, 1)
    xs = torch.arange(w).view(1, w)
    offsets, dist = [], []
    for d in dilations:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                offsets.append((dy * d, dx * d))
                dist.append(math.sqrt(2) * d if dy and dx else float(d))

    def gather(t, off):
        yy = (ys + off[0]).clamp(0, h - 1).expand(h, w)
        xx = (xs + off[1]).clamp(0, w - 1).expand(h, w)
        return t[:, yy, xx]

    near = torch.stack([gather(image, o) for o in offsets], 0)  # N×3×H×W
    sigma = near.std(dim=0, unbiased=True)
    colour = -((near - image).abs() / (sigma + 1e-8) / 0.3).pow(2).mean(dim=1)  # N×H×W
    d = torch.tensor(dist)
    pos = -(d / (d.std() + 1e-8) / 0.3).pow(2)
    aff = torch.softmax(colour, dim=0) + 0.01 * torch.softmax(pos, dim=0).view(-1, 1, 1)
    for _ in range(iters):
        probs = sum(aff[j] * gather(probs, o) for j, o in enumerate(offsets))
    return probs


def test_batched_matches_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 40, 36, generator=g)
    probs = torch.softmax(torch.randn(3, 4, 40, 36, generator=g) * 3, dim=1)
    dil = (1, 2, 4, 8, 12, 24)
    out = refine(images, probs, dilations=dil, iters=10)
    for b in range(3):
        ref = _loop_par(images[b], probs[b], dil, 10)
        assert (out[b] - ref).abs().max() <= 1e-5


def test_affinity_rows_sum_to_one_point_zero_one_and_shared():
    images = torch.rand(2, 3, 24, 24)
    aff = pixel_affinity(images)
    assert aff.shape == (2, 48, 24, 24)
    torch.testing.assert_close(aff.sum(1), torch.full((2, 24, 24), 1.01))
    # Sharing the affinity between two stacks equals refining each separately.
    a, b = torch.rand(2, 3, 24, 24), torch.rand(2, 2, 24, 24)
    both = propagate(aff, torch.cat([a, b], 1), ParConfig(iters=3))
    torch.testing.assert_close(both[:, :3], refine(images, a, iters=3), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both[:, 3:], refine(images, b, iters=3), atol=1e-6, rtol=1e-5)


def test_constant_image_and_probs_fixed_point():
    # Uniform probabilities are scaled by 1.01 per iteration (affinity not renormalised).
    images = torch.rand(1, 3, 16, 16)
    probs = torch.full((1, 2, 16, 16), 0.5)
    out = refine(images, probs, iters=2)
    torch.testing.assert_close(out, probs * 1.01**2)


def test_probs_resized_to_image_size():
    images = torch.rand(1, 3, 32, 32)
    probs = torch.rand(1, 2, 16, 16)
    out = refine(images, probs, iters=1)
    up = F.interpolate(probs, size=(32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, refine(images, up, iters=1))
