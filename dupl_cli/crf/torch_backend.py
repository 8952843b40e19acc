"""Batched mean-field inference of pydensecrf's ``DenseCRF2D`` model in torch (CPU or CUDA, fp32).

The model dupl uses (docs/method.md §11): unary U, a Gaussian kernel on pixel position (sxy)
and a bilateral kernel on position and colour (sxy, srgb), both with Potts compatibility -w and
symmetric normalisation n_i = 1 / sqrt(k_i·1). Each step, as ``DenseCRF::inference``:
Q <- softmax(-U + sum_k w_k n_k * K_k(n_k * Q)), starting from Q = softmax(-U).

Images of different sizes go through in one batch (one lattice per kernel for the whole batch);
several unaries of one image (the CAM CRF's two passes) share its lattices as extra channels.
"""

from __future__ import annotations

import numpy as np
import torch

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.crf.lattice import Lattice, build_lattice, locality_order
from dupl_cli.crf.params import CAM_CRF_GT_PROB

INF = float("inf")


def _features(images: list[torch.Tensor], sxy: float, srgb: float | None) -> torch.Tensor:
    """d×N per-pixel features, pydensecrf's: x/sxy, y/sxy[, r/srgb, g/srgb, b/srgb] in float32.

    The divisions run on the host (on CUDA torch divides by a scalar as a multiply by its reciprocal,
    which can differ in the last bit); the device only indexes the small tables."""
    dev = images[0].device
    longest = max(max(im.shape[:2]) for im in images)
    step = torch.from_numpy(np.arange(longest, dtype=np.float32) / np.float32(sxy)).to(dev)
    lut = None
    if srgb is not None:
        lut = torch.from_numpy(np.arange(256, dtype=np.float32) / np.float32(srgb)).to(dev)
    out = []
    for im in images:
        h, w = im.shape[:2]
        parts = [step[:w].expand(h, w), step[:h, None].expand(h, w)]
        if lut is not None:
            parts += list(lut[im.long()].unbind(2))
        out.append(torch.stack(parts).reshape(len(parts), h * w))
    return torch.cat(out, 1)


def _lattices(images: list[torch.Tensor], k, sparse: bool | None):
    """The Gaussian and bilateral lattices of a batch (``k``: CrfParams) with their Potts weights, and
    the point order they use (``locality_order``; marginals come back in raster order)."""
    dev = images[0].device
    sizes = [im.shape[0] * im.shape[1] for im in images]
    owner = torch.repeat_interleave(torch.arange(len(images), device=dev), torch.tensor(sizes, device=dev))
    ghosts = torch.tensor([i for i, s in enumerate(sizes) if s % 4], dtype=torch.long, device=dev)
    bilateral = _features(images, k.bilateral_sxy, k.bilateral_srgb)
    order = locality_order(bilateral, owner)
    owner = owner[order]
    out = []
    for compat, feats in ((k.gauss_compat, None), (k.bilateral_compat, bilateral)):
        if compat != 0:
            feats = _features(images, k.gauss_sxy, None) if feats is None else feats
            out.append((build_lattice(feats[:, order], owner, ghosts, sparse=sparse), compat))
    return out, order


def mean_field(lattices: list[tuple[Lattice, float]], unary: torch.Tensor, iters: int) -> torch.Tensor:
    """Marginals N×S×K after ``iters`` steps from N×S×K unaries (S per pixel; +inf: absent label)."""
    n, s, k = unary.shape
    norms = [(lat, w, (lat.filter(unary.new_ones(n, 1)) + 1e-20).rsqrt()) for lat, w in lattices]
    neg_u = -unary
    q = torch.softmax(neg_u, 2)
    for _ in range(iters):
        energy = neg_u
        for lat, w, norm in norms:  # energy += w * n * K(n * q): Potts -w, subtracted
            msg = lat.filter(q.reshape(n, s * k) * norm)
            energy = torch.addcmul(energy, msg.view(n, s, k), norm[:, :, None], value=w)
        q = torch.softmax(energy, 2)
    return q


def marginals(
    images: list[torch.Tensor], unaries: list[torch.Tensor], params, *, sparse: bool | None = None
) -> list[torch.Tensor]:
    """S×K_i×H×W marginals for each image (H×W×3 uint8) and S×K_i×H×W unary; one batch."""
    s = unaries[0].shape[0]
    kmax = max(u.shape[1] for u in unaries)
    flat = []
    for u in unaries:
        u = u.to(torch.float32).flatten(2).permute(2, 0, 1)  # N×S×K
        if u.shape[2] < kmax:  # absent labels: zero probability, no messages
            u = torch.cat([u, u.new_full((*u.shape[:2], kmax - u.shape[2]), INF)], 2)
        flat.append(u)
    unary = torch.cat(flat)
    lattices, order = _lattices(images, params, sparse)
    q = torch.empty_like(unary)
    q[order] = mean_field(lattices, unary[order], params.iters)
    out, start = [], 0
    for im, u in zip(images, unaries, strict=True):
        h, w = im.shape[:2]
        qi = q[start : start + h * w, :, : u.shape[1]]
        out.append(qi.permute(1, 2, 0).reshape(s, u.shape[1], h, w))
        start += h * w
    return out


def segmentation_unary(logits: torch.Tensor) -> torch.Tensor:
    """K×H×W logits -> 1×K×H×W unary -log softmax."""
    return -torch.log_softmax(logits.to(torch.float32), 0)[None]


def label_unary(labels: torch.Tensor, n: int, gt_prob: float) -> torch.Tensor:
    """S×H×W label maps -> S×n×H×W unary: -log gt_prob at the label, -log((1-gt_prob)/(n-1)) elsewhere
    (pydensecrf ``unary_from_labels`` with zero_unsure=False; energies rounded to float32 as there)."""
    on = float(np.float32(-np.log(gt_prob)))
    off = float(np.float32(-np.log((1.0 - gt_prob) / (n - 1))))
    onehot = torch.nn.functional.one_hot(labels.long(), n).permute(0, 3, 1, 2).bool()
    return torch.where(onehot, on, off).to(torch.float32)


@torch.no_grad()
def segmentation_labels(images: list[torch.Tensor], logits: list[torch.Tensor], params, *,
                        sparse: bool | None = None) -> list[torch.Tensor]:  # fmt: skip
    """uint8 H×W labels of the CRF with unary -log softmax(logits), one batch (``sparse``: see
    ``build_lattice``)."""
    q = marginals(images, [segmentation_unary(lg) for lg in logits], params, sparse=sparse)
    return [qi[0].argmax(0).to(torch.uint8) for qi in q]


@torch.no_grad()
def cam_labels(images, cams, class_ids: list[np.ndarray], params, tau_high: float, tau_low: float) -> list:
    """CAM pseudo-labels (uint8) from P×H×W CAMs of the present classes (ids 1..C): two CRF passes
    per image (constant background score tau_high, tau_low) sharing its lattices; the foreground of
    the tau_high pass, background where both passes say background, IGNORE_INDEX elsewhere."""
    out = [torch.zeros(im.shape[:2], dtype=torch.uint8, device=im.device) for im in images]
    todo = [i for i, c in enumerate(cams) if c.shape[0] > 0]  # no class present: all background
    if not todo:
        return out
    unaries = []
    for i in todo:
        cam = cams[i].to(torch.float32)
        labels = torch.stack([torch.cat([cam.new_full((1, *cam.shape[1:]), tau), cam]).argmax(0)
                              for tau in (tau_high, tau_low)])  # fmt: skip
        unaries.append(label_unary(labels, cam.shape[0] + 1, CAM_CRF_GT_PROB))
    for i, q in zip(todo, marginals([images[i] for i in todo], unaries, params), strict=True):
        high, low = q.argmax(1)
        keys = torch.as_tensor(np.concatenate([[0], class_ids[i]]), device=q.device)
        label = torch.where((high == 0) & (low == 0), 0, IGNORE_INDEX)
        out[i] = torch.where(high > 0, keys[high], label).to(torch.uint8)
    return out
