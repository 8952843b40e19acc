"""Test-only views and twins of the method: what the tests compare against, not product API.

- ``kmeans_1d`` / ``fit_two_gaussians``: the noise filter's k-means and mixture fit alone, to hold
  them against scikit-learn.
- ``refine``: PAR on one stack at the image's size, the per-call twin of the batched label path.
- ``discrepancy_loss``: both discrepancy terms summed (the step keeps them apart, per student).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dupl_cli.method import losses as L
from dupl_cli.method.noise_filter import _FINE_BINS, MixtureFit, _fit, _Histogram, _kmeans_centres
from dupl_cli.method.par import pixel_affinity, propagate
from dupl_cli.method.params import NoiseFilterConfig, ParConfig


def kmeans_1d(x: torch.Tensor, mask: torch.Tensor, *, max_iter: int = 64) -> torch.Tensor:
    """scikit-learn's KMeans(2, n_init=1, random_state=0) per row of x (N×P) over ``mask``.

    Returns labels N×P (0/1, meaningless outside the mask) with scikit-learn's centre order.
    """
    c = _kmeans_centres(x, mask, _Histogram(x, mask, _FINE_BINS), max_iter=max_iter).to(x.dtype)
    return ((x - c[:, 1:]).abs() < (x - c[:, :1]).abs()).long()


def fit_two_gaussians(
    losses: torch.Tensor, mask: torch.Tensor, config: NoiseFilterConfig = NoiseFilterConfig()
) -> MixtureFit:
    """One 1-D two-component mixture per row of ``losses`` (N×P) over ``mask`` (N×P bool)."""
    return _fit(losses, mask, config)[0]


def refine(images: torch.Tensor, probs: torch.Tensor, *, dilations=(1, 2, 4, 8, 12, 24), iters: int = 10):
    """Refine probability maps B×K×H×W with the colour/position affinity of images B×3×H×W."""
    par = ParConfig(dilations=tuple(dilations), iters=iters)
    probs = probs.float()
    if probs.shape[-2:] != images.shape[-2:]:
        probs = F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=True)
    return propagate(pixel_affinity(images, par), probs, par)


def discrepancy_loss(f1: torch.Tensor, f2: torch.Tensor, *, form: str = "release") -> torch.Tensor:
    to_2, to_1 = L.discrepancy_terms(f1, f2, form=form)
    return to_2 + to_1
