"""Adaptive noise filtering (ANF, docs/method.md §6): one batched two-Gaussian EM over N loss maps.

Reproduces scikit-learn's ``GaussianMixture(2, max_iter, tol, reg_covar, random_state=0)`` with
``init_params="kmeans"`` on each map's fitting set, with no Python loop over maps and one host
sync at most. Everything rests on one per-row histogram of the fitting values (2^16 equal bins
over the row's range, counts only; Σx, Σx² from the bins taken as uniform; float64 prefix sums):

* k-means (sklearn's ``KMeans(2, n_init=1, random_state=0)``): k-means++ in raster order as
  sklearn draws it (``RandomState(0)``'s first three uniforms; the raster searches use block sums,
  not a cumsum over all pixels), then Lloyd steps until the labels stop changing or the centres
  move less than ``1e-4·var``. In 1-D a step is a split at the centres' midpoint, i.e. one
  prefix-sum lookup per row (the straddled bin pro rata). After 12 steps one sync skips the rest
  when every map has settled.
* EM on groups of 32 bins: each group's pixels share the responsibility of the group's mean, with
  its count, Σx and Σx² (midpoint rule, error second order in the width: ~2e-5 relative).
* The final posterior is evaluated once per pixel in float32, on losses centred per row.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method.params import NoiseFilterConfig

# The first three draws of numpy.random.RandomState(0).random_sample(): the k-means++ first
# centre (choice with uniform p) and the two local trials of the second centre.
_RS0_FIRST = 0.5488135039273248
_RS0_TRIALS = (0.7151893663724195, 0.6027633760716439)
_KMEANS_TOL = 1e-4
_EPS64 = torch.finfo(torch.float64).eps
_FINE_BINS = (
    1 << 16
)  # per row, for k-means splits: at realistic ranges ~1e-4 wide, under a pixel near the split
_EM_BINS = 1 << 11  # per row, for EM (groups of 32 fine bins; midpoint-rule error ~2e-5 relative)


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
    """Per-row counts of the masked values in ``bins`` equal bins over [min, max], with raw moments.

    Only counts are scattered (one bincount over N×P; non-masked pixels land in a spill bin per
    row). Each bin's pixels are taken as uniform over the bin, so Σx and Σx² per bin follow from the
    count (error ~width²: ~1e-9 relative). Moments are kept in bin units u = (x - lo)·scale as
    [n, n·u, n·(u² + 1/12)] with float64 prefix sums for O(1) split queries.
    """

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, bins: int):
        n_rows = x.shape[0]
        acc = _acc_dtype(x.device)
        x = x.float()
        self.bins = bins
        count = _block_sums(mask)[1].sum(1)  # mask.sum(1) would copy the mask to int64
        self.count = count.to(acc)
        # The k-means++ first centre (sklearn's uniform choice: the floor(u·n)-th masked pixel in
        # raster order) and the first/last masked pixels, from block counts of the mask.
        first_target = (torch.tensor(_RS0_FIRST, dtype=acc, device=x.device) * self.count).floor()
        bounds = torch.stack([torch.ones_like(self.count), first_target + 1, self.count.clamp_min(1)], 1)
        self.first_fit, first, self.last_fit = _first_reaching(mask, bounds).unbind(1)
        self.c0 = x.gather(1, first.unsqueeze(1))
        # Distances to c0, zero off the mask: min/max need no fill value, k-means++ reuses them, and
        # in the histogram the non-masked pixels all land in c0's bin, where they are taken off.
        # Pixel-sized buffers are reused in place (fresh ones cost page faults on every call).
        self.dist = d = (x - self.c0).masked_fill_(~mask, 0)  # not mul_: inf off the mask must not leak
        c0 = self.c0.to(acc)
        self.lo = d.amin(1, keepdim=True).to(acc) + c0
        hi = d.amax(1, keepdim=True).to(acc) + c0
        self.scale = bins / (hi - self.lo).clamp_min(1e-12)
        # Bin index per pixel (the row offset added as integers: float32 could not hold it exactly).
        self.scratch = pos = torch.addcmul(
            ((c0 - self.lo) * self.scale).float(), d, self.scale.float()
        ).clamp_(0, bins - 1)
        pos = pos.view(torch.int32).copy_(pos)  # converted in place: each element is read, then written
        c0_bin = pos.gather(1, first.unsqueeze(1)).long()
        pos += torch.arange(0, n_rows * bins, bins, device=x.device, dtype=torch.int32).unsqueeze(1)
        # index_add_ takes the int32 indices as they are (bincount would copy them to int64).
        ones = torch.ones(1, dtype=torch.int32, device=x.device).expand(pos.numel())
        n = torch.zeros(n_rows * bins, dtype=torch.int32, device=x.device).index_add_(0, pos.view(-1), ones)
        n = n.view(n_rows, bins).scatter_add_(1, c0_bin, (count - x.shape[1]).int().unsqueeze(1))
        self.raw = raw = torch.empty(3, n_rows, bins, dtype=acc, device=x.device)  # [n, n·u, n·(u² + 1/12)]
        raw[0] = n
        u = torch.arange(bins, device=x.device, dtype=acc) + 0.5
        torch.mul(raw[0], u, out=raw[1])
        torch.mul(raw[0], u.square_().add_(1 / 12), out=raw[2])
        self.cum = torch.cumsum(raw, 2)  # cum[..., j] = sum of bins <= j
        self.total = self.physical(self.cum[:, :, -1:]).squeeze(2)  # 3×N

    def physical(self, raw: torch.Tensor) -> torch.Tensor:
        """[Σ1, Σu, Σu²] (3×N×K, bin units) -> [Σ1, Σx, Σx²] with x = lo + u / scale."""
        inv = self.scale.reciprocal()
        r0, r1, r2 = raw
        s1 = self.lo * r0 + inv * r1
        return torch.stack([r0, s1, self.lo * (s1 + inv * r1) + inv.square() * r2])

    def below_raw(self, pos: torch.Tensor) -> torch.Tensor:
        """Raw moments of each row's values with u < pos (N×K); the straddled bin pro rata."""
        pos = pos.clamp(0, self.bins)
        j = pos.floor().clamp_(max=self.bins - 1)
        rest = j + 1 - pos
        j = j.long().unsqueeze(0).expand(3, -1, -1)
        return self.cum.gather(2, j) - self.raw.gather(2, j) * rest

    def below(self, t: torch.Tensor) -> torch.Tensor:
        """3×N×K [count, Σx, Σx²] of each row's values < t (N×K)."""
        return self.physical(self.below_raw((t - self.lo) * self.scale))


def _block_sums(weights: torch.Tensor, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """weights (N×P) as N×blocks×block (zero-padded) and the per-block sums."""
    n_rows, size = weights.shape
    pad = -size % block
    if pad:
        weights = torch.cat([weights, weights.new_zeros(n_rows, pad)], 1)
    blocks = weights.view(n_rows, -1, block)
    if weights.dtype == torch.bool and weights.is_contiguous() and weights.storage_offset() % 8 == 0:
        # Bytes summed as packed int64 words (each byte's sum <= block/8 < 256: no carries), then
        # the 8 byte sums added: no int64 copy of the whole mask.
        words = weights.view(torch.int64).view(n_rows, -1, block // 8).sum(2)
        return blocks, words.view(torch.uint8).view(n_rows, -1, 8).sum(2)
    return blocks, blocks.sum(2)


def _first_reaching(
    weights: torch.Tensor, targets: torch.Tensor, block: int = 256, scale_by_total: bool = False
) -> torch.Tensor:
    """Per row the first index where the running sum of ``weights`` (N×P, >= 0) reaches ``targets``
    (N×K), as searchsorted on the cumsum would give, clamped to P-1. Sums are float64 over blocks,
    so no cumsum over all pixels is built."""
    n_rows, size = weights.shape
    blocks, block_sums = _block_sums(weights, block)
    acc = targets.dtype
    block_cum = torch.cumsum(block_sums.to(acc), 1)
    if scale_by_total:  # targets are fractions of each row's total
        targets = targets * block_cum[:, -1:]
    b = torch.searchsorted(block_cum, targets).clamp_(max=blocks.shape[1] - 1)  # N×K
    before = torch.where(b > 0, block_cum.gather(1, (b - 1).clamp_(min=0)), 0)
    inside = blocks.gather(1, b.unsqueeze(2).expand(-1, -1, block))  # N×K×block
    local = torch.cumsum(inside, 2, dtype=acc) + before.unsqueeze(2)
    j = torch.searchsorted(local, targets.unsqueeze(2)).squeeze(2).clamp_(max=block - 1)
    return (b * block + j).clamp_(max=size - 1)


def _kmeans_centres(
    x: torch.Tensor, mask: torch.Tensor, hist: _Histogram, *, max_iter: int = 64, check_after: int = 12
) -> torch.Tensor:
    """scikit-learn's KMeans(2, n_init=1, random_state=0) centres per row: N×2, in its order."""
    count, total = hist.count, hist.total
    acc = count.dtype
    safe = count.clamp_min(1)
    var = (total[2] / safe - (total[1] / safe).square()).clamp_min(0)

    # k-means++: after the first centre (see _Histogram), the better of two trials drawn from the
    # squared-distance distribution in raster order (float64 running sums as sklearn's stable_cumsum).
    c0 = hist.c0
    d0 = hist.dist.square_()  # 0 off the mask (the buffer is not needed as distances afterwards)
    trials = torch.tensor(_RS0_TRIALS, dtype=acc, device=x.device)
    cand_pos = _first_reaching(d0, trials, scale_by_total=True)
    cand_pos = torch.minimum(torch.maximum(cand_pos, hist.first_fit.unsqueeze(1)), hist.last_fit.unsqueeze(1))
    cand = x.gather(1, cand_pos).to(acc)  # N×2
    c0 = c0.to(acc).expand_as(cand)
    # Potential of {c0, candidate}: each side of their midpoint around its own centre.
    low_c, high_c = torch.minimum(c0, cand), torch.maximum(c0, cand)
    low = hist.below((c0 + cand) / 2)
    high = total.unsqueeze(2) - low
    cand_pot = (low[2] - 2 * low_c * low[1] + low_c.square() * low[0]) + (
        high[2] - 2 * high_c * high[1] + high_c.square() * high[0]
    )
    c1 = cand.gather(1, cand_pot.argmin(1, keepdim=True)).squeeze(1)
    c0 = c0[:, 0]

    # Lloyd in 1-D keeps the centres' order, so track them sorted ([low, high], N×2) in bin units
    # and restore sklearn's order last. Each step: the split at the midpoint from the prefix sums.
    swapped = c0 > c1
    centres = (torch.stack([torch.minimum(c0, c1), torch.maximum(c0, c1)], 1) - hist.lo) * hist.scale
    tol = var * _KMEANS_TOL * hist.scale.squeeze(1).square()
    cum, raw = hist.cum[:2], hist.raw[:2]  # [n, n·u]
    tot = cum[:, :, -1]  # 2×N
    top = hist.bins - 1
    done = count < 2
    n_old = torch.full_like(count, -1)
    for step in range(max_iter):
        if step == check_after and bool(done.all()):  # the one host sync: most maps settle in < 12 steps
            break
        pos = centres.sum(1, keepdim=True).mul_(0.5).clamp_(0, hist.bins)
        j = pos.floor().clamp_(max=top)
        jj = j.long().expand(2, -1, -1)
        low = (cum.gather(2, jj) - raw.gather(2, jj) * (j + 1 - pos)).squeeze(
            2
        )  # 2×N: [n, Σu] below the midpoint
        parts = torch.stack([low, tot - low], 2)  # 2×N×2(side)
        n = parts[0]
        # An empty cluster keeps its centre (sklearn relocates it; with 2 clusters in 1-D and
        # distinct centres this cannot happen).
        new = torch.where(n > 0.5, parts[1] / n.clamp_min(0.5), centres)
        shift = (new - centres).square_().sum(1)
        centres = torch.where(done.unsqueeze(1), centres, new)
        done = done | (low[0] == n_old) | (shift <= tol)
        n_old = low[0]
    centres = hist.lo + centres / hist.scale
    return torch.where(swapped.unsqueeze(1), centres.flip(1), centres)


def _log_odds_coefficients(means, variances, weights):
    """Per row [A, B, C] with log w1N1(x) - log w0N0(x) = A x² + B x + C, and the precisions.

    With two 1-D Gaussians the log posterior odds are a quadratic in x, so every EM pass over the
    pixels is one matrix product, one sigmoid and one softplus.
    """
    prec = variances.reciprocal()
    half_log = 0.5 * prec.log() + weights.log()
    a = -0.5 * (prec[:, 1] - prec[:, 0])
    b = prec[:, 1] * means[:, 1] - prec[:, 0] * means[:, 0]
    c = (
        half_log[:, 1]
        - half_log[:, 0]
        - 0.5 * (prec[:, 1] * means[:, 1] ** 2 - prec[:, 0] * means[:, 0] ** 2)
    )
    return torch.stack([a, b, c], 1), prec


def _moments_to_params(comp1, totals, reg):
    """sklearn's M-step from [Σr x², Σr x, Σr] of component 1 (component 0 = totals - those)."""
    s = torch.stack([totals - comp1, comp1], 1)  # N×2×3
    nk = s[..., 2] + 10 * _EPS64
    means = s[..., 1] / nk
    variances = (s[..., 0] - 2 * means * s[..., 1] + means.square() * s[..., 2]) / nk + reg
    return nk, means, variances


class _Gaussians(NamedTuple):
    """Two 1-D Gaussians per row: each N×2."""

    means: torch.Tensor
    variances: torch.Tensor  # reg included
    weights: torch.Tensor


def _em_bins(x: torch.Tensor, hist: _Histogram) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(stats N×3×B [Σx², Σx, Σ1] per coarse bin, powers N×3×B [m², m, 1] of each bin's mean m,
    totals N×3 [Σx², Σx, Σ1] per row) for EM on ``_EM_BINS`` coarse bins.

    Each bin's pixels get the responsibility of the bin's mean value, with the bin's exact Σ1, Σx,
    Σx² (midpoint rule: the error is second order in the bin width, ~1e-6 relative at 1/8192 of the
    range, below float32 per-pixel arithmetic's own).
    """
    n_rows = x.shape[0]
    groups = hist.physical(hist.raw.view(3, n_rows, _EM_BINS, -1).sum(3))  # 3×N×B: [Σ1, Σx, Σx²]
    stats = groups.flip(0).transpose(0, 1).contiguous()  # N×3×B: [Σx², Σx, Σ1]
    centre_of_bin = (
        hist.lo
        + (torch.arange(_EM_BINS, device=x.device, dtype=hist.count.dtype) + 0.5)
        * (_FINE_BINS // _EM_BINS)
        / hist.scale
    )
    mean_of_bin = torch.where(stats[:, 2] > 0, stats[:, 1] / stats[:, 2].clamp_min(1), centre_of_bin)
    powers = torch.stack([mean_of_bin.square(), mean_of_bin, torch.ones_like(mean_of_bin)], 1)  # N×3×B
    return stats, powers, hist.total.flip(0).T


def _kmeans_start(
    x: torch.Tensor, mask: torch.Tensor, hist: _Histogram, totals: torch.Tensor, reg: float
) -> _Gaussians:
    """sklearn's initial mixture: responsibilities split at the k-means centres' midpoint (label 1 =
    nearer c1), then one M-step. ``totals``: N×3 [Σx², Σx, Σ1] per row."""
    c = _kmeans_centres(x, mask, hist)
    below = hist.below((c.sum(1) / 2).unsqueeze(1)).squeeze(2).flip(0).T  # N×3 of values < midpoint
    comp1 = torch.where((c[:, 1] > c[:, 0]).unsqueeze(1), totals - below, below)
    nk, means, variances = _moments_to_params(comp1, totals, reg)
    return _Gaussians(means, variances, nk / hist.count.clamp_min(1).unsqueeze(1))


def _em(
    start: _Gaussians,
    stats: torch.Tensor,
    powers: torch.Tensor,
    totals: torch.Tensor,
    count: torch.Tensor,
    done: torch.Tensor,
    config: NoiseFilterConfig,
) -> tuple[_Gaussians, torch.Tensor]:
    """(fitted Gaussians, EM iterations run per row N) of up to ``config.iters`` EM passes over the
    coarse bins (:func:`_em_bins`); rows ``done`` (N bool) from the start keep ``start``."""
    means, variances, weights = start
    safe = count.clamp_min(1)
    m1, m2 = totals[:, 1] / safe, totals[:, 0] / safe
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    lower = torch.full_like(count, -math.inf)
    n_iter = torch.zeros_like(count, dtype=torch.long)
    resp = torch.empty(
        count.shape[0], 2, _EM_BINS, dtype=count.dtype, device=count.device
    )  # [sigmoid, softplus] of q
    for _ in range(config.iters):
        coef, prec = _log_odds_coefficients(means, variances, weights)
        q = torch.bmm(coef.unsqueeze(1), powers).squeeze(1)  # log odds of component 1 per bin
        torch.sigmoid(q, out=resp[:, 0])
        resp[:, 1] = F.softplus(q)
        sums = torch.bmm(stats, resp.transpose(1, 2))  # N×3×2
        # Mean log-likelihood = mean log w0N0(x) (from the moments) + mean softplus(q).
        log_w0n0 = (
            weights[:, 0].log()
            - half_log_2pi
            + 0.5 * prec[:, 0].log()
            - 0.5 * prec[:, 0] * (m2 - 2 * means[:, 0] * m1 + means[:, 0] ** 2)
        )
        bound = log_w0n0 + sums[:, 2, 1] / safe
        nk_new, means_new, var_new = _moments_to_params(sums[..., 0], totals, config.reg)
        keep = done.unsqueeze(1)
        means = torch.where(keep, means, means_new)
        variances = torch.where(keep, variances, var_new)
        weights = torch.where(keep, weights, nk_new / nk_new.sum(1, keepdim=True))
        n_iter = n_iter + (~done).long()
        done = done | ((bound - lower).abs() < config.tol)
        lower = bound
    return _Gaussians(means, variances, weights), n_iter


def _fit(x: torch.Tensor, mask: torch.Tensor, config: NoiseFilterConfig) -> tuple[MixtureFit, _Histogram]:
    """One two-Gaussian mixture per row of ``x`` (N×P) over ``mask`` (N×P bool), and the histogram."""
    hist = _Histogram(x, mask, _FINE_BINS)
    count = hist.count
    fitted = count > config.min_pixels
    stats, powers, totals = _em_bins(x, hist)
    start = _kmeans_start(x, mask, hist, totals, config.reg)
    (means, variances, weights), n_iter = _em(start, stats, powers, totals, count, ~fitted, config)
    # A component holding less than one pixel's responsibility is an empty k-means cluster
    # (e.g. a single-valued map): its mean is a placeholder, so the fit is not a real split.
    populated = (weights * count.unsqueeze(1)).amin(1) >= 1
    valid = fitted & populated & ((means[:, 0] - means[:, 1]).abs() > config.eta)
    return MixtureFit(means, variances, weights, fitted, valid, n_iter, count.long()), hist


def noisy_pixels(
    losses: torch.Tensor,
    labels: torch.Tensor,
    config: NoiseFilterConfig = NoiseFilterConfig(),
    *,
    return_fit: bool = False,
):
    """True where a pixel of ``labels`` (N×H×W: 0 bg, 1..C, 255 ignore) is judged noise.

    ``losses`` N×H×W per-pixel CE of the label. Noise = posterior of the larger-mean component
    > gamma on a valid fit and label != 0; ``config.one_sided`` also requires loss > the clean mean
    (``False`` reproduces the release). Non-finite losses are not fitted and never noise. With
    ``return_fit`` returns ``(mask, MixtureFit)``.
    """
    shape = losses.shape
    x = losses.detach().reshape(shape[0], -1)
    lab = labels.reshape(shape[0], -1)
    not_bg = lab != 0
    fit_mask = lab != IGNORE_INDEX
    fit_mask &= not_bg
    fit_mask &= x > config.loss_floor
    # A non-finite loss (a diverged step) cannot be fitted: left out of the fit (a row with nothing
    # finite is not fitted) and read as 0 below, so it is never noise.
    finite = torch.isfinite(x)
    fit_mask &= finite
    x = torch.where(finite, x, 0.0)
    fit, hist = _fit(x, fit_mask, config)
    centre = (fit.means * fit.weights).sum(1)  # centring keeps the float32 quadratic accurate

    # posterior(noise) > gamma <=> log odds of the noise component > logit(gamma); the log odds
    # are a quadratic in the centred loss, evaluated once per pixel in float32.
    means_c = fit.means - centre.unsqueeze(1)
    coef, _ = _log_odds_coefficients(means_c, fit.variances, fit.weights)
    noise_is_1 = fit.means[:, 1] > fit.means[:, 0]
    coef = coef * torch.where(noise_is_1, 1.0, -1.0).to(coef.dtype).unsqueeze(1)
    coef[:, 2].masked_fill_(~fit.valid, -math.inf)  # no noise on a map without a valid fit
    coef = coef.float()
    # The histogram's two float32 pixel buffers are free now: reuse them.
    xc = torch.sub(x.float(), centre.float().unsqueeze(1), out=hist.dist)
    odds = torch.addcmul(coef[:, 1:2], xc, coef[:, 0:1], out=hist.scratch)
    torch.addcmul(coef[:, 2:3], odds, xc, out=odds)
    noise = odds > math.log(config.gamma / (1 - config.gamma))
    noise &= not_bg
    if config.one_sided:
        clean_mean = torch.where(noise_is_1, means_c[:, 0], means_c[:, 1]).float().unsqueeze(1)
        noise &= xc > clean_mean
    noise = noise.reshape(shape)
    return (noise, fit) if return_fit else noise
