"""Adaptive noise filtering (ANF, SPEC.md §6): one batched two-Gaussian EM over N loss maps.

Reproduces scikit-learn's ``GaussianMixture(2, max_iter, tol, reg_covar, random_state=0)`` with
``init_params="kmeans"`` on each map's fitting set, without a Python loop over maps and without
host round trips: every map is one row of an N×P masked tensor.

k-means initialisation as scikit-learn does it for 1-D data with ``KMeans(2, n_init=1,
random_state=0)``: k-means++ (first centre drawn with ``RandomState(0)``'s first uniform,
two local trials for the second centre with its next two uniforms), then Lloyd iterations that
stop on unchanged labels or a centre shift below ``1e-4·var(x)``. In 1-D, Lloyd's assignment is
a split of the sorted values at the centres' midpoint, so each iteration is one
``searchsorted`` on prefix sums.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

# The first three draws of numpy.random.RandomState(0).random_sample(): the k-means++ first
# centre (choice with uniform p) and the two local trials of the second centre.
_RS0_FIRST = 0.5488135039273248
_RS0_TRIALS = (0.7151893663724195, 0.6027633760716439)
_KMEANS_TOL = 1e-4
_EPS64 = torch.finfo(torch.float64).eps


class MixtureFit(NamedTuple):
    means: torch.Tensor  # N×2
    variances: torch.Tensor  # N×2 (reg included)
    weights: torch.Tensor  # N×2
    fitted: torch.Tensor  # N bool: more than min_pixels fitting pixels
    valid: torch.Tensor  # N bool: fitted, both components populated and |mu0 - mu1| > eta
    n_iter: torch.Tensor  # N int: EM iterations run (sklearn's n_iter_)
    n_fit: torch.Tensor  # N int: fitting pixels


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def kmeans_1d(x: torch.Tensor, mask: torch.Tensor, *, max_iter: int = 64) -> torch.Tensor:
    """scikit-learn's KMeans(2, n_init=1, random_state=0) per row of x (N×P) over ``mask``.

    Returns labels N×P (0/1, meaningless outside the mask) with scikit-learn's centre order.
    """
    n_rows, n_cols = x.shape
    raw = x  # sorted in its own dtype (float32 sorts faster); sums in the work dtype
    x = x.to(_work_dtype(x.device))
    w = mask.to(x.dtype)
    count = w.sum(1)
    safe = count.clamp_min(1)
    rows = torch.arange(n_rows, device=x.device)

    # k-means++ first centre: index floor(u·n) among the masked pixels in raster order.
    rank = torch.cumsum(mask.long(), 1) - 1  # position of each pixel among the masked ones
    target = (torch.tensor(_RS0_FIRST, dtype=x.dtype, device=x.device) * count).floor().long()
    first_pos = torch.where(mask & (rank == target.unsqueeze(1)), 1, 0).argmax(1)
    c0 = x[rows, first_pos]
    d0 = (x - c0.unsqueeze(1)).square() * w
    cum = torch.cumsum(d0, 1)
    pot = cum[:, -1]
    last_pos = (mask.long() * torch.arange(n_cols, device=x.device)).argmax(1)
    trials = torch.tensor(_RS0_TRIALS, dtype=x.dtype, device=x.device).unsqueeze(0) * pot.unsqueeze(1)
    cand_pos = torch.searchsorted(cum.contiguous(), trials.contiguous())  # N×2, side left
    cand_pos = torch.minimum(cand_pos, last_pos.unsqueeze(1))
    cand = x.gather(1, cand_pos)  # N×2
    cand_pot = torch.minimum(d0.unsqueeze(1), (x.unsqueeze(1) - cand.unsqueeze(2)).square() * w.unsqueeze(1)).sum(2)
    c1 = cand.gather(1, cand_pot.argmin(1, keepdim=True)).squeeze(1)

    # Lloyd on sorted values: label = side of the midpoint; prefix sums give the new means.
    big = torch.finfo(raw.dtype).max
    ordered = torch.where(mask, raw, torch.full_like(raw, big)).sort(1).values.to(x.dtype)
    prefix = torch.cumsum(torch.where(ordered < big, ordered, 0.0), 1)
    prefix = torch.cat([torch.zeros_like(prefix[:, :1]), prefix], 1)
    total = prefix.gather(1, count.long().unsqueeze(1)).squeeze(1)
    mean = total / safe
    var = (((x - mean.unsqueeze(1)) * w).square().sum(1)) / safe
    tol = var * _KMEANS_TOL

    def split(a, b):
        # Number of values assigned to the lower centre; ties go to centre 0 (sklearn's first index).
        mid = (a + b) / 2
        lower_is_0 = a <= b
        k_right = torch.searchsorted(ordered, mid.unsqueeze(1).contiguous(), right=True).squeeze(1)
        k_left = torch.searchsorted(ordered, mid.unsqueeze(1).contiguous(), right=False).squeeze(1)
        k = torch.where(lower_is_0, k_right, k_left).clamp(max=count.long())
        return k, lower_is_0

    done = count < 2
    k_old = torch.full_like(count, -1, dtype=torch.long)
    for _ in range(max_iter):
        k, lower_is_0 = split(c0, c1)
        low_sum = prefix.gather(1, k.unsqueeze(1)).squeeze(1)
        n_low = k.to(x.dtype)
        n_high = count - n_low
        # An empty cluster keeps its centre (sklearn relocates it; with 2 clusters in 1-D and
        # distinct centres this cannot happen).
        low_mean = torch.where(n_low > 0, low_sum / n_low.clamp_min(1), torch.minimum(c0, c1))
        high_mean = torch.where(n_high > 0, (total - low_sum) / n_high.clamp_min(1), torch.maximum(c0, c1))
        new0 = torch.where(lower_is_0, low_mean, high_mean)
        new1 = torch.where(lower_is_0, high_mean, low_mean)
        shift = (new0 - c0).square() + (new1 - c1).square()
        c0 = torch.where(done, c0, new0)
        c1 = torch.where(done, c1, new1)
        done = done | (k == k_old) | (shift <= tol)
        k_old = k
    nearer_1 = (x - c1.unsqueeze(1)).abs() < (x - c0.unsqueeze(1)).abs()
    return nearer_1.long()


def _log_odds_coefficients(means, variances, weights):
    """Per row (A, B, C, and component 0's terms): log w1N1(x) - log w0N0(x) = A x² + B x + C.

    With two 1-D Gaussians the log posterior odds are a quadratic in x, so every EM pass over the
    pixels is one matrix product, one sigmoid and one softplus.
    """
    prec = variances.reciprocal()
    half_log = 0.5 * prec.log() + weights.log()
    a = -0.5 * (prec[:, 1] - prec[:, 0])
    b = prec[:, 1] * means[:, 1] - prec[:, 0] * means[:, 0]
    c = half_log[:, 1] - half_log[:, 0] - 0.5 * (prec[:, 1] * means[:, 1] ** 2 - prec[:, 0] * means[:, 0] ** 2)
    return torch.stack([a, b, c], 1), prec


def _moments_to_params(r_sums, totals, reg):
    """sklearn's M-step from Σr, Σr·x, Σr·x² of component 1 (component 0 = totals - those)."""
    s1 = torch.stack([totals - r_sums, r_sums], 1)  # N×2×3: [Σr, Σr x, Σr x²]
    nk = s1[..., 0] + 10 * _EPS64
    means = s1[..., 1] / nk
    variances = (s1[..., 2] - 2 * means * s1[..., 1] + means.square() * s1[..., 0]) / nk + reg
    return nk, means, variances


def fit_two_gaussians(
    losses: torch.Tensor,
    mask: torch.Tensor,
    *,
    min_pixels: int = 1000,
    eta: float = 1.0,
    iters: int = 10,
    tol: float = 1e-2,
    reg: float = 5e-4,
) -> MixtureFit:
    """Fit one 1-D two-component mixture per row of ``losses`` (N×P) over ``mask`` (N×P bool)."""
    dtype = _work_dtype(losses.device)
    x = losses.to(dtype)
    w = mask.to(dtype)
    count = w.sum(1)
    safe = count.clamp_min(1)
    fitted = count > min_pixels

    x2 = x * x
    feats = torch.stack([w, w * x, w * x2], 1)  # N×3×P: masked [1, x, x²], contiguous in P
    totals = feats.sum(2)  # N×3

    def moments(r: torch.Tensor) -> torch.Tensor:  # Σ_fit r·[1, x, x²] as one GEMV per row
        return torch.bmm(feats, r.unsqueeze(2)).squeeze(2)

    labels = kmeans_1d(losses, mask).to(dtype)
    nk, means, variances = _moments_to_params(moments(labels), totals, reg)
    weights = nk / safe.unsqueeze(1)

    lower = torch.full_like(count, -math.inf)
    done = ~fitted
    n_iter = torch.zeros_like(count, dtype=torch.long)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    for _ in range(iters):
        coef, prec = _log_odds_coefficients(means, variances, weights)
        q = torch.addcmul(coef[:, 2:3] + coef[:, 1:2] * x, coef[:, 0:1], x2)
        # Mean log-likelihood = mean log w0N0(x) (from the moments) + mean softplus(q).
        m1, m2 = totals[:, 1] / safe, totals[:, 2] / safe
        log_w0n0 = weights[:, 0].log() - half_log_2pi + 0.5 * prec[:, 0].log() - 0.5 * prec[:, 0] * (m2 - 2 * means[:, 0] * m1 + means[:, 0] ** 2)
        bound = log_w0n0 + (F.softplus(q) * w).sum(1) / safe
        nk_new, means_new, var_new = _moments_to_params(moments(torch.sigmoid(q)), totals, reg)
        keep = done.unsqueeze(1)
        means = torch.where(keep, means, means_new)
        variances = torch.where(keep, variances, var_new)
        weights = torch.where(keep, weights, nk_new / nk_new.sum(1, keepdim=True))
        n_iter = n_iter + (~done).long()
        done = done | ((bound - lower).abs() < tol)
        lower = bound

    # A component holding less than one pixel's responsibility is an empty k-means cluster
    # (e.g. a single-valued map): its mean is a placeholder 0, so the fit is not a real split.
    populated = (weights * count.unsqueeze(1)).amin(1) >= 1
    valid = fitted & populated & ((means[:, 0] - means[:, 1]).abs() > eta)
    return MixtureFit(means, variances, weights, fitted, valid, n_iter, count.long())


def noisy_pixels(
    losses: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float = 0.95,
    eta: float = 1.0,
    min_pixels: int = 1000,
    loss_floor: float = 0.1,
    iters: int = 10,
    tol: float = 1e-2,
    reg: float = 5e-4,
    one_sided: bool = True,
    return_fit: bool = False,
):
    """True where a pixel of ``labels`` (N×H×W: 0 bg, 1..C, 255 ignore) is judged noise.

    ``losses`` N×H×W per-pixel CE of the label. Noise = posterior of the larger-mean component
    > gamma on a valid fit and label != 0; ``one_sided`` also requires loss > the clean mean
    (``False`` reproduces the release). With ``return_fit`` returns ``(mask, MixtureFit)``.
    """
    shape = losses.shape
    x = losses.detach().reshape(shape[0], -1)
    lab = labels.reshape(shape[0], -1)
    fit_mask = (lab != 0) & (lab != 255) & (x > loss_floor)
    fit = fit_two_gaussians(x, fit_mask, min_pixels=min_pixels, eta=eta, iters=iters, tol=tol, reg=reg)

    xw = x.to(fit.means.dtype)
    coef, _ = _log_odds_coefficients(fit.means, fit.variances, fit.weights)
    q = torch.addcmul(coef[:, 2:3] + coef[:, 1:2] * xw, coef[:, 0:1], xw * xw)  # log odds of comp 1
    noise_is_1 = fit.means[:, 1] > fit.means[:, 0]
    # posterior(noise) > gamma  <=>  log odds of the noise component > logit(gamma)
    noise_odds = torch.where(noise_is_1.unsqueeze(1), q, -q)
    noise = fit.valid.unsqueeze(1) & (noise_odds > math.log(gamma / (1 - gamma))) & (lab != 0)
    if one_sided:
        clean_mean = torch.where(noise_is_1, fit.means[:, 0], fit.means[:, 1]).unsqueeze(1)
        noise = noise & (xw > clean_mean)
    noise = noise.reshape(shape)
    return (noise, fit) if return_fit else noise
