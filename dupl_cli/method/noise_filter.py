"""Adaptive noise filtering (ANF, SPEC.md §6): one batched two-Gaussian EM over N loss maps.

Reproduces scikit-learn's ``GaussianMixture(2, max_iter, tol, reg_covar, random_state=0)`` with
``init_params="kmeans"`` on each map's fitting set, with no Python loop over maps and no host
sync. Everything rests on one per-row histogram of the fitting values (2^16 equal bins over the
row's range, count and Σx per bin, prefix sums in float64):

* k-means (sklearn's ``KMeans(2, n_init=1, random_state=0)``): k-means++ in raster order as
  sklearn draws it (``RandomState(0)``'s first three uniforms), then Lloyd steps until the labels
  stop changing or the centres move less than ``1e-4·var``. In 1-D a step is a split at the
  centres' midpoint, i.e. one prefix-sum lookup per row (the straddled bin pro rata).
* EM on groups of 8 bins: each bin's pixels share the responsibility of the bin's mean, with the
  bin's exact count and Σx (midpoint rule, error second order in the bin width: ~1e-6 relative).
* The final posterior is evaluated once per pixel in float32, on losses centred per row.
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
_FINE_BINS = 1 << 16  # per row, for k-means splits: at realistic ranges ~1e-4 wide, under a pixel near the split
_EM_BINS = 1 << 13  # per row, for EM (groups of 8 fine bins)


class MixtureFit(NamedTuple):
    means: torch.Tensor  # N×2
    variances: torch.Tensor  # N×2 (reg included)
    weights: torch.Tensor  # N×2
    fitted: torch.Tensor  # N bool: more than min_pixels fitting pixels
    valid: torch.Tensor  # N bool: fitted, both components populated and |mu0 - mu1| > eta
    n_iter: torch.Tensor  # N int: EM iterations run (sklearn's n_iter_)
    n_fit: torch.Tensor  # N int: fitting pixels


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class _Histogram:
    """Per-row counts, Σx and Σx² of the masked values in ``bins`` equal bins over [min, max].

    Non-masked pixels land in a spill bin per row, so building it is one pass over N×P with no
    packing and no host sync; ``prefix`` holds the cumulative sums (float64) for O(1) split queries.
    """

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, bins: int):
        n_rows = x.shape[0]
        acc = _acc_dtype(x.device)
        x = x.float()
        self.bins = bins
        self.count = mask.sum(1).to(acc)
        big = torch.finfo(torch.float32).max
        has = self.count > 0
        lo = torch.where(mask, x, big).amin(1).to(acc)
        hi = torch.where(mask, x, -big).amax(1).to(acc)
        lo, hi = torch.where(has, lo, 0), torch.where(has, hi, 1)
        self.lo = lo.unsqueeze(1)
        self.scale = (bins / (hi - lo).clamp_min(1e-12)).unsqueeze(1)
        # Bin index per pixel (the row offset added as integers: float32 could not hold it exactly).
        pos = torch.addcmul((-self.lo * self.scale).float(), x, self.scale.float()).clamp_(0, bins - 1)
        pos = torch.where(mask, pos, bins).long()
        flat = (pos + torch.arange(n_rows, device=x.device).unsqueeze(1) * (bins + 1)).reshape(-1)
        size = n_rows * (bins + 1)
        n = torch.bincount(flat, minlength=size).view(n_rows, bins + 1)[:, :bins].to(acc)
        s1 = torch.zeros(size, device=x.device).scatter_add_(0, flat, x.reshape(-1)).view(n_rows, bins + 1)[:, :bins].to(acc)
        # Σx² per bin = n·mean² + the spread inside the bin (≤ n·width²/4, taken as uniform's
        # n·width²/12): a relative error ~1e-9 that saves a scatter over every pixel.
        s2 = s1.square() / n.clamp_min(1) + n / (12 * self.scale.square())
        self.hist = torch.stack([n, s1, s2])  # 3×N×bins: [count, Σx, Σx²]
        self.prefix = F.pad(torch.cumsum(self.hist, 2), (1, 0))  # prefix[..., j] = sum of bins < j
        self.total = self.prefix[:, :, -1]  # 3×N

    def below(self, t: torch.Tensor) -> torch.Tensor:
        """3×N×K [count, Σx, Σx²] of each row's values < t (N×K); the straddled bin pro rata."""
        pos = (t - self.lo) * self.scale
        j = pos.floor().clamp(0, self.bins - 1)
        frac = (pos - j).clamp(0, 1)
        j = j.long().unsqueeze(0).expand(3, -1, -1)
        return self.prefix.gather(2, j) + self.hist.gather(2, j) * frac


def _kmeans_centres(x: torch.Tensor, mask: torch.Tensor, hist: _Histogram, *, max_iter: int = 64) -> torch.Tensor:
    """scikit-learn's KMeans(2, n_init=1, random_state=0) centres per row: N×2, in its order."""
    count, total = hist.count, hist.total
    acc = count.dtype
    safe = count.clamp_min(1)
    var = (total[2] / safe - (total[1] / safe).square()).clamp_min(0)
    tol = var * _KMEANS_TOL

    # k-means++ first centre: the floor(u·n)-th masked pixel in raster order (sklearn's choice
    # with uniform p); then the better of two trials drawn from the squared-distance distribution
    # (cumsum in float64 as sklearn's stable_cumsum).
    rank = torch.cumsum(mask, 1, dtype=torch.int32)
    first_target = (torch.tensor(_RS0_FIRST, dtype=acc, device=x.device) * count).floor()
    bounds = torch.stack([torch.ones_like(count), first_target + 1, count.clamp_min(1)], 1)
    first_fit, first, last_fit = torch.searchsorted(rank, bounds.to(torch.int32)).clamp_(max=x.shape[1] - 1).unbind(1)
    c0 = x.gather(1, first.unsqueeze(1))
    d0 = torch.where(mask, x.float() - c0.float(), 0).to(acc)
    cum = torch.cumsum(d0.square_(), 1)
    trials = torch.tensor(_RS0_TRIALS, dtype=acc, device=x.device) * cum[:, -1:]
    cand_pos = torch.searchsorted(cum, trials)
    cand_pos = torch.minimum(torch.maximum(cand_pos, first_fit.unsqueeze(1)), last_fit.unsqueeze(1))
    cand = x.gather(1, cand_pos).to(acc)  # N×2
    c0 = c0.to(acc).expand_as(cand)
    # Potential of {c0, candidate}: each side of their midpoint around its own centre.
    low_c, high_c = torch.minimum(c0, cand), torch.maximum(c0, cand)
    low = hist.below((c0 + cand) / 2)
    high = total.unsqueeze(2) - low
    cand_pot = (low[2] - 2 * low_c * low[1] + low_c.square() * low[0]) + (high[2] - 2 * high_c * high[1] + high_c.square() * high[0])
    c1 = cand.gather(1, cand_pot.argmin(1, keepdim=True)).squeeze(1)
    c0 = c0[:, 0]

    # Lloyd in 1-D keeps the centres' order, so track them sorted ([low, high], N×2) and restore
    # sklearn's order last. Each step: the split at the midpoint from the prefix sums.
    swapped = c0 > c1
    centres = torch.stack([torch.minimum(c0, c1), torch.maximum(c0, c1)], 1)
    prefix = hist.prefix[:2]  # count, Σx
    offset, scale = -hist.lo * hist.scale, hist.scale
    done = count < 2
    n_old = torch.full_like(count, -1)
    for _ in range(max_iter):
        pos = torch.addcmul(offset, centres.mean(1, keepdim=True), scale).clamp_(0, hist.bins)
        j = pos.floor().clamp_(max=hist.bins - 1)
        at = prefix.gather(2, torch.cat([j, j + 1], 1).long().expand(2, -1, -1))
        n_low, sum_low = torch.lerp(at[..., 0], at[..., 1], pos.squeeze(1) - j.squeeze(1))
        n = torch.stack([n_low, count - n_low], 1)
        # An empty cluster keeps its centre (sklearn relocates it; with 2 clusters in 1-D and
        # distinct centres this cannot happen).
        new = torch.where(n > 0.5, torch.stack([sum_low, total[1] - sum_low], 1) / n.clamp_min(0.5), centres)
        shift = (new - centres).square().sum(1)
        centres = torch.where(done.unsqueeze(1), centres, new)
        done = done | (n_low == n_old) | (shift <= tol)
        n_old = n_low
    return torch.where(swapped.unsqueeze(1), centres.flip(1), centres)


def kmeans_1d(x: torch.Tensor, mask: torch.Tensor, *, max_iter: int = 64) -> torch.Tensor:
    """scikit-learn's KMeans(2, n_init=1, random_state=0) per row of x (N×P) over ``mask``.

    Returns labels N×P (0/1, meaningless outside the mask) with scikit-learn's centre order.
    """
    c = _kmeans_centres(x, mask, _Histogram(x, mask, _FINE_BINS), max_iter=max_iter).to(x.dtype)
    return ((x - c[:, 1:]).abs() < (x - c[:, :1]).abs()).long()


def _log_odds_coefficients(means, variances, weights):
    """Per row [A, B, C] with log w1N1(x) - log w0N0(x) = A x² + B x + C, and the precisions.

    With two 1-D Gaussians the log posterior odds are a quadratic in x, so every EM pass over the
    pixels is one matrix product, one sigmoid and one softplus.
    """
    prec = variances.reciprocal()
    half_log = 0.5 * prec.log() + weights.log()
    a = -0.5 * (prec[:, 1] - prec[:, 0])
    b = prec[:, 1] * means[:, 1] - prec[:, 0] * means[:, 0]
    c = half_log[:, 1] - half_log[:, 0] - 0.5 * (prec[:, 1] * means[:, 1] ** 2 - prec[:, 0] * means[:, 0] ** 2)
    return torch.stack([a, b, c], 1), prec


def _moments_to_params(comp1, totals, reg):
    """sklearn's M-step from [Σr x², Σr x, Σr] of component 1 (component 0 = totals - those)."""
    s = torch.stack([totals - comp1, comp1], 1)  # N×2×3
    nk = s[..., 2] + 10 * _EPS64
    means = s[..., 1] / nk
    variances = (s[..., 0] - 2 * means * s[..., 1] + means.square() * s[..., 2]) / nk + reg
    return nk, means, variances


def _fit(x: torch.Tensor, mask: torch.Tensor, *, min_pixels, eta, iters, tol, reg) -> MixtureFit:
    hist = _Histogram(x, mask, _FINE_BINS)
    count, total = hist.count, hist.total
    acc = count.dtype
    safe = count.clamp_min(1)
    fitted = count > min_pixels

    # EM on coarse bins: each bin's pixels get the responsibility of the bin's mean value, with
    # the bin's exact Σ1, Σx, Σx² (midpoint rule: the error is second order in the bin width,
    # ~1e-6 relative at 1/8192 of the range, below float32 per-pixel arithmetic's own).
    n_rows = x.shape[0]
    stats = hist.hist.reshape(3, n_rows, _EM_BINS, -1).sum(3).flip(0).transpose(0, 1).contiguous()  # N×3×B: [Σx², Σx, Σ1]
    centre_of_bin = hist.lo + (torch.arange(_EM_BINS, device=x.device, dtype=acc) + 0.5) * (_FINE_BINS // _EM_BINS) / hist.scale
    mean_of_bin = torch.where(stats[:, 2] > 0, stats[:, 1] / stats[:, 2].clamp_min(1), centre_of_bin)
    powers = torch.stack([mean_of_bin.square(), mean_of_bin, torch.ones_like(mean_of_bin)], 1)  # N×3×B
    totals = total.flip(0).T  # N×3: [Σx², Σx, Σ1]

    # Initial responsibilities: the k-means split at the centres' midpoint (label 1 = nearer c1).
    c = _kmeans_centres(x, mask, hist)
    below = hist.below((c.sum(1) / 2).unsqueeze(1)).squeeze(2).flip(0).T  # N×3 of values < midpoint
    comp1 = torch.where((c[:, 1] > c[:, 0]).unsqueeze(1), totals - below, below)
    nk, means, variances = _moments_to_params(comp1, totals, reg)
    weights = nk / safe.unsqueeze(1)

    m1, m2 = totals[:, 1] / safe, totals[:, 0] / safe
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    lower = torch.full_like(count, -math.inf)
    done = ~fitted
    n_iter = torch.zeros_like(count, dtype=torch.long)
    resp = torch.empty(n_rows, 2, _EM_BINS, dtype=acc, device=x.device)  # [sigmoid, softplus] of q
    for _ in range(iters):
        coef, prec = _log_odds_coefficients(means, variances, weights)
        q = torch.bmm(coef.unsqueeze(1), powers).squeeze(1)  # log odds of component 1 per bin
        torch.sigmoid(q, out=resp[:, 0])
        resp[:, 1] = F.softplus(q)
        sums = torch.bmm(stats, resp.transpose(1, 2))  # N×3×2
        # Mean log-likelihood = mean log w0N0(x) (from the moments) + mean softplus(q).
        log_w0n0 = weights[:, 0].log() - half_log_2pi + 0.5 * prec[:, 0].log() - 0.5 * prec[:, 0] * (m2 - 2 * means[:, 0] * m1 + means[:, 0] ** 2)
        bound = log_w0n0 + sums[:, 2, 1] / safe
        nk_new, means_new, var_new = _moments_to_params(sums[..., 0], totals, reg)
        keep = done.unsqueeze(1)
        means = torch.where(keep, means, means_new)
        variances = torch.where(keep, variances, var_new)
        weights = torch.where(keep, weights, nk_new / nk_new.sum(1, keepdim=True))
        n_iter = n_iter + (~done).long()
        done = done | ((bound - lower).abs() < tol)
        lower = bound

    # A component holding less than one pixel's responsibility is an empty k-means cluster
    # (e.g. a single-valued map): its mean is a placeholder, so the fit is not a real split.
    populated = (weights * count.unsqueeze(1)).amin(1) >= 1
    valid = fitted & populated & ((means[:, 0] - means[:, 1]).abs() > eta)
    return MixtureFit(means, variances, weights, fitted, valid, n_iter, count.long())


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
    return _fit(losses, mask, min_pixels=min_pixels, eta=eta, iters=iters, tol=tol, reg=reg)


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
    not_bg = lab != 0
    fit_mask = not_bg & (lab != 255) & (x > loss_floor)
    fit = _fit(x, fit_mask, min_pixels=min_pixels, eta=eta, iters=iters, tol=tol, reg=reg)
    centre = (fit.means * fit.weights).sum(1)  # centring keeps the float32 quadratic accurate

    # posterior(noise) > gamma <=> log odds of the noise component > logit(gamma); the log odds
    # are a quadratic in the centred loss, evaluated once per pixel in float32.
    means_c = fit.means - centre.unsqueeze(1)
    coef, _ = _log_odds_coefficients(means_c, fit.variances, fit.weights)
    noise_is_1 = fit.means[:, 1] > fit.means[:, 0]
    coef = (coef * torch.where(noise_is_1, 1.0, -1.0).to(coef.dtype).unsqueeze(1)).float()
    xc = x.float() - centre.float().unsqueeze(1)
    odds = torch.addcmul(coef[:, 2:3], torch.addcmul(coef[:, 1:2], xc, coef[:, 0:1]), xc)
    noise = (odds > math.log(gamma / (1 - gamma))) & fit.valid.unsqueeze(1) & not_bg
    if one_sided:
        clean_mean = torch.where(noise_is_1, means_c[:, 0], means_c[:, 1]).float().unsqueeze(1)
        noise &= xc > clean_mean
    noise = noise.reshape(shape)
    return (noise, fit) if return_fit else noise
