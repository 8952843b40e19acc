"""Pixel-adaptive refinement (PAR, from AFA/ToCo; docs/method.md §5), batched over images.

The 48 neighbours (8 of a 3×3 stencil at each dilation) are read as shifted views of one
replicate-padded tensor: padding by the largest dilation and slicing at offset d equals padding by
d, so no neighbour stack of the probabilities is ever materialised. ``pixel_affinity`` is computed
once per image and ``propagate`` applies it to any number of probability channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dupl_cli.method.params import ParConfig

# Order of the 8 stencil neighbours (row, col offsets in units of the dilation).
STENCIL = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for dy, dx in STENCIL]


def _shifted(padded: torch.Tensor, pad: int, offset: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    dy, dx = offset
    return padded[..., pad + dy : pad + dy + size[0], pad + dx : pad + dx + size[1]]


def neighbours(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """B×K×H×W -> B×K×N×H×W with N = 8·len(dilations) replicate-padded neighbours."""
    pad = max(dilations)
    size = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack([_shifted(padded, pad, o, size) for o in neighbour_offsets(dilations)], dim=2)


def pixel_affinity(images: torch.Tensor, par: ParConfig = ParConfig()) -> torch.Tensor:
    """B×3×H×W images in [0, 1] -> B×N×H×W affinity (softmax colour + w_pos·softmax position)."""
    dilations, w_color, w_pos = par.dilations, par.w_color, par.w_pos
    images = images.float()
    near = neighbours(images, dilations)  # B×3×N×H×W
    std = near.std(dim=2, keepdim=True)  # unbiased, over the N neighbours
    # (|I_j - I_i| / (std + 1e-8) / w)^2 in place, as one reciprocal scale and a square (no abs needed).
    scale = ((std + 1e-8) * w_color).reciprocal_()
    color = near.sub_(images.unsqueeze(2)).mul_(scale).square_().mean(dim=1).neg_()  # B×N×H×W
    # Axial neighbours sit at distance d, diagonal ones at sqrt(2)·d.
    distance = torch.tensor(
        [(math.sqrt(2) * d if dy and dx else float(d)) for d in dilations for dy, dx in STENCIL],
        dtype=torch.float32,
        device=images.device,
    )
    position = -((distance / (distance.std() + 1e-8) / w_color) ** 2)
    return color.softmax(dim=1) + w_pos * position.softmax(dim=0).view(1, -1, 1, 1)


def propagate(affinity: torch.Tensor, probs: torch.Tensor, par: ParConfig = ParConfig()) -> torch.Tensor:
    """Apply ``par.iters`` rounds of P_i <- sum_j A_ij P_j; affinity B×N×H×W, probs B×K×H×W."""
    pad = max(par.dilations)
    size = probs.shape[-2:]
    offsets = neighbour_offsets(par.dilations)
    weights = affinity.unsqueeze(1)  # B×1×N×H×W, broadcast over channels
    for _ in range(par.iters):
        padded = F.pad(probs, (pad, pad, pad, pad), mode="replicate")
        out = torch.zeros_like(probs)
        for j, offset in enumerate(offsets):
            out.addcmul_(_shifted(padded, pad, offset, size), weights[:, :, j])
        probs = out
    return probs
