"""ANF: batched EM vs scikit-learn's GaussianMixture per map, plus the edge cases of docs/method.md §6."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from method_oracles import fit_two_gaussians, kmeans_1d
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.params import NoiseFilterConfig


def realistic_maps(n: int, size: int = 64, seed: int = 0):
    """Loss maps like a confident seg head's CE: gamma-shaped clean losses, a noisy mode far above."""
    rng = np.random.default_rng(seed)
    losses = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        y = np.zeros((size, size), np.int64)
        y0, x0 = rng.integers(0, size // 4, 2)
        y[y0 : y0 + size // 2 + 8, x0 : x0 + size // 2 + 10] = rng.integers(1, 21)
        y[: rng.integers(0, 4)] = IGNORE_INDEX
        clean = rng.gamma(rng.uniform(1.5, 3), rng.uniform(0.15, 0.4), (size, size))
        noisy = np.abs(rng.normal(rng.uniform(0.8, 5), rng.uniform(0.2, 1.5), (size, size)))
        share = rng.uniform(0.05, 0.5)
        losses[i] = np.where(rng.random((size, size)) < share, noisy, clean)
        labels[i] = y
    return torch.from_numpy(losses), torch.from_numpy(labels)


def sklearn_reference(loss: np.ndarray, label: np.ndarray, one_sided: bool):
    x, y = loss.ravel().astype(np.float64), label.ravel()
    sel = (y != 0) & (y != IGNORE_INDEX) & (x > 0.1)
    if sel.sum() <= 1000:
        return None, np.zeros_like(y, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm = GaussianMixture(2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(x[sel, None])
    means = gmm.means_.ravel()
    noise_comp = int(np.argmax(means))
    post = gmm.predict_proba(x[:, None])[:, noise_comp]
    noise = (abs(means[0] - means[1]) > 1.0) & (post > 0.95) & (y != 0)
    if one_sided:
        noise &= x > means[1 - noise_comp]
    return gmm, noise


@pytest.mark.parametrize("one_sided", [False, True])
def test_matches_sklearn_on_many_maps(one_sided):
    losses, labels = realistic_maps(48, seed=1 + one_sided)
    noise, fit = noisy_pixels(losses, labels, NoiseFilterConfig(one_sided=one_sided), return_fit=True)
    agree, total, compared = 0, 0, 0
    for i in range(len(losses)):
        gmm, ref = sklearn_reference(losses[i].numpy(), labels[i].numpy(), one_sided)
        agree += int((noise[i].numpy().ravel() == ref).sum())
        total += ref.size
        if gmm is None:
            assert not fit.fitted[i]
            continue
        compared += 1
        np.testing.assert_allclose(fit.means[i].numpy(), gmm.means_.ravel(), rtol=1e-3)
        np.testing.assert_allclose(fit.variances[i].numpy(), gmm.covariances_.ravel(), rtol=1e-3)
        np.testing.assert_allclose(fit.weights[i].numpy(), gmm.weights_, rtol=1e-3, atol=1e-6)
        assert int(fit.n_iter[i]) == gmm.n_iter_
    assert compared >= 40
    assert agree / total >= 0.999


def test_kmeans_init_matches_sklearn_kmeans():
    from sklearn.cluster import KMeans

    losses, labels = realistic_maps(12, seed=5)
    x = losses.reshape(12, -1).double()
    mask = labels.reshape(12, -1) > 0
    mask &= labels.reshape(12, -1) != IGNORE_INDEX
    ours = kmeans_1d(x, mask)
    for i in range(12):
        xi = x[i][mask[i]].numpy()[:, None]
        ref = KMeans(2, n_init=1, random_state=np.random.RandomState(0)).fit(xi).labels_
        assert (ours[i][mask[i]].numpy() == ref).mean() >= 0.999


def test_one_sided_never_flags_below_clean_mean():
    losses, labels = realistic_maps(16, seed=3)
    noise, fit = noisy_pixels(losses, labels, return_fit=True)
    clean = fit.means.min(1).values.float()
    assert not (noise & (losses <= clean.view(-1, 1, 1))).any()
    two_sided = noisy_pixels(losses, labels, NoiseFilterConfig(one_sided=False))
    assert (noise <= two_sided).all()


def _bimodal(size=64, fg=1):
    g = torch.Generator().manual_seed(0)
    loss = torch.where(
        torch.rand(size, size, generator=g) < 0.3,
        4 + torch.randn(size, size, generator=g).abs(),
        torch.rand(size, size, generator=g) * 0.5 + 0.15,
    )
    return loss, torch.full((size, size), fg, dtype=torch.long)


def test_edge_cases():
    loss, fg = _bimodal()
    assert noisy_pixels(loss[None], fg[None]).any()  # the normal case flags something
    small = torch.zeros_like(fg)
    small[:31, :32] = 3  # 992 foreground pixels <= 1000
    all_bg = torch.zeros_like(fg)
    all_ignored = torch.full_like(fg, IGNORE_INDEX)
    flat = torch.full_like(loss, 2.0)
    close = torch.where(loss > 1, torch.full_like(loss, 1.2), torch.full_like(loss, 0.5))  # |dmu| = 0.7
    losses = torch.stack([loss, loss, loss, flat, close])
    labels = torch.stack([small, all_bg, all_ignored, fg, fg])
    noise, fit = noisy_pixels(losses, labels, return_fit=True)
    assert not noise.any()
    assert fit.fitted.tolist() == [False, False, False, True, True]
    assert not fit.valid.any()
    assert torch.isfinite(fit.means[3:]).all() and torch.isfinite(fit.variances[3:]).all()
    # Batching does not change a map's result: the valid map alongside the degenerate ones.
    mixed = noisy_pixels(torch.cat([losses, loss[None]]), torch.cat([labels, fg[None]]))
    assert torch.equal(mixed[-1], noisy_pixels(loss[None], fg[None])[0])


def test_background_never_flagged_and_loss_floor():
    loss, fg = _bimodal()
    labels = fg.clone()
    labels[:, :20] = 0
    noise = noisy_pixels(loss[None], labels[None], NoiseFilterConfig(one_sided=False))
    assert noise.any() and not noise[0, :, :20].any()
    # Pixels under the loss floor are not fitted: raising the floor above everything removes the fit.
    _, fit = noisy_pixels(loss[None], fg[None], NoiseFilterConfig(loss_floor=100.0), return_fit=True)
    assert not fit.fitted.any()


def test_fit_api_shapes():
    x = torch.rand(3, 2000) * 5
    fit = fit_two_gaussians(x, torch.ones_like(x, dtype=torch.bool))
    assert fit.means.shape == fit.variances.shape == fit.weights.shape == (3, 2)
    torch.testing.assert_close(fit.weights.sum(1), torch.ones(3, dtype=fit.weights.dtype))


def test_matches_sklearn_when_pixels_not_a_multiple_of_the_block():
    # 70×70 = 4900 pixels: the raster searches (k-means++ draws) run on a zero-padded last block.
    losses, labels = realistic_maps(12, size=70, seed=7)
    noise, fit = noisy_pixels(losses, labels, NoiseFilterConfig(one_sided=False), return_fit=True)
    compared = 0
    for i in range(len(losses)):
        gmm, ref = sklearn_reference(losses[i].numpy(), labels[i].numpy(), one_sided=False)
        if gmm is None:
            continue
        compared += 1
        np.testing.assert_allclose(fit.means[i].numpy(), gmm.means_.ravel(), rtol=1e-3)
        np.testing.assert_allclose(fit.variances[i].numpy(), gmm.covariances_.ravel(), rtol=1e-3)
        assert int(fit.n_iter[i]) == gmm.n_iter_
        assert (noise[i].numpy().ravel() == ref).mean() >= 0.999
    assert compared >= 8


def test_non_finite_losses_are_not_fitted():
    """A diverged step's losses (inf/NaN) are left out of the fit, never an IndexError: a row with
    nothing finite is not fitted and flags nothing; a row with a few non-finite pixels fits the rest
    as if those pixels were ignored, and its non-finite pixels are not noise."""
    loss, fg = _bimodal()
    spoiled = loss.clone()
    spoiled[0, :7] = float("inf")
    spoiled[1, :5] = float("nan")
    ignored = fg.clone()
    ignored[0, :7] = IGNORE_INDEX
    ignored[1, :5] = IGNORE_INDEX
    losses = torch.stack([torch.full_like(loss, float("inf")), torch.full_like(loss, float("nan")), spoiled])
    noise, fit = noisy_pixels(losses, torch.stack([fg, fg, fg]), return_fit=True)
    assert fit.fitted.tolist() == [False, False, True] and fit.valid.tolist() == [False, False, True]
    assert not noise[:2].any() and not noise[2, 0, :7].any() and not noise[2, 1, :5].any()
    expected, expected_fit = noisy_pixels(loss[None], ignored[None], return_fit=True)
    torch.testing.assert_close(fit.means[2], expected_fit.means[0])
    assert torch.equal(noise[2][ignored != IGNORE_INDEX], expected[0][ignored != IGNORE_INDEX])
